# shellcheck shell=bash
# Shell quoting shared by the launch scripts (sourced, not run).

# Shell-quotes one word so that a printed command or a written script parses back to it.
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Quotes every word, space-separated.
quote_all() {
  local out="" word
  for word in "$@"; do
    out+="$(quote "$word") "
  done
  printf '%s' "${out% }"
}
