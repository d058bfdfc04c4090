"""benchmarks/device.py, the one script a session with a GPU runs: its parts at tiny sizes on
the CPU, so that it works when a device is lent, and its hand FLOP count against XLA's."""

import json
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import optax
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from rag_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
import device  # pylint: disable=g-import-not-at-top,wrong-import-position

CPU = {"device": "cpu", "backend": "cpu", "nominal_tflops": None, "nominal_tb_s": None}


@pytest.mark.slow
def test_hand_flop_count_matches_xla_count_of_the_step():
  # Big enough that matmuls dominate; XLA also counts elementwise work, so it is a bit above.
  dpr = dict(vocab_size=500, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=512, max_position_embeddings=64, projection_dim=0)
  bart = dict(vocab_size=2000, d_model=128, encoder_layers=2, decoder_layers=2,
              encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=512,
              decoder_ffn_dim=512, max_position_embeddings=128)
  s = dict(device.QUICK, dpr=dpr, bart=bart, docs=3, context=64, target=16, question=16)
  rag, init = device._rag_model(jax, jnp, s)
  tx = optax.adamw(1e-5)
  step = step_lib.jit_train_step(rag, tx, common.step_config(3, 64))
  compiled = step.lower(step_lib.create_state(init(), tx, seed=0),
                        device._train_inputs(jnp, s, 4), None).compile()
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  ratio = analysis["flops"] / device.train_flops(dpr, bart, 4, 3, 16, 64, 16)
  assert 1.0 <= ratio < 1.15, ratio


@pytest.mark.slow
def test_train_part_runs_every_batch_and_learns():
  rows = list(device.train(jax, jnp, device.QUICK, CPU, steps=2))
  assert [r["batch"] for r in rows] == list(device.QUICK["batches"])
  for r in rows:
    assert math.isfinite(r["loss"]) and r["s_per_step"] > 0 and r["mfu"] is None


@pytest.mark.parametrize("gpu_layout", [False, True])
@pytest.mark.slow
def test_search_part_agrees_with_a_full_top_k(monkeypatch, gpu_layout):
  from rag_jax.index import ondevice  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(ondevice, "GPU_LAYOUT", gpu_layout)
  monkeypatch.setattr(ondevice, "SELECT_BLOCK", 16)  # so that the quick sizes use blocks
  rows = list(device.search(jax, jnp, device.QUICK, CPU, copy_tb_s=1.0))
  checked = [r for r in rows if r["chunk"] != "unchunked"]
  assert len(checked) == len(device.QUICK["chunks"]) * len(device.QUICK["query_batches"])
  assert len(rows) - len(checked) == len(device.QUICK["query_batches"])
  assert all(r["same_ids_as_full_top_k"] and r["max_score_diff"] == 0.0 for r in checked)


@pytest.mark.slow
def test_main_writes_its_lines_to_out(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(sys, "argv", ["device.py", "--quick", "--parts", "ceilings",
                                    "--prng", "rbg", "--out", str(tmp_path)])
  before = jax.config.jax_default_prng_impl
  try:
    device.main()
  finally:
    jax.config.update("jax_default_prng_impl", before)
  lines = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
  assert [x["part"] for x in lines] == ["card", "ceilings"]
  assert lines[0]["prng"] == "rbg"
  assert lines[1]["matmul_tflops"] > 0 and lines[1]["copy_tb_s"] > 0
  assert capsys.readouterr().out.count("\n") == 2
