"""rag_jax.files: atomic writes leave the old file or the whole new one; a locked directory
has one holder."""

import json
import os

import numpy as np
import pytest

from rag_jax import files


def test_write_json_and_save_npy_replace_whole_files(tmp_path):
  files.write_json(tmp_path / "a.json", {"x": 1})
  files.write_json(tmp_path / "a.json", {"x": 2})
  assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
  files.save_npy(tmp_path / "v.npy", np.arange(6.0).reshape(2, 3))
  np.testing.assert_array_equal(np.load(tmp_path / "v.npy"), np.arange(6.0).reshape(2, 3))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "v.npy"]  # no temp files


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
  files.write_json(tmp_path / "a.json", {"x": 1})
  with pytest.raises(TypeError):
    files.write_json(tmp_path / "a.json", {"x": object()})  # not JSON: fails mid-write
  assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
  assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_files_get_the_umask_mode(tmp_path):
  old = os.umask(0o027)
  try:
    files.save_npy(tmp_path / "v.npy", np.zeros(3))
  finally:
    os.umask(old)
  assert (tmp_path / "v.npy").stat().st_mode & 0o777 == 0o640


def test_locked_keeps_a_directory_to_one_holder(tmp_path):
  with files.locked(tmp_path) as path:
    assert path.read_text() == f"{os.getpid()}\n"
    with pytest.raises(files.InUseError, match=f"is in use by process {os.getpid()}, which"):
      with files.locked(tmp_path):
        pass
  assert not path.exists()  # let go, removed
  path.write_text("12345\n")  # what a killed holder leaves: taken over
  with files.locked(tmp_path):
    assert path.read_text() == f"{os.getpid()}\n"
  assert not path.exists()
