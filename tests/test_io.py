"""Output files: written beside the target and moved into place whole, never over an input, with clear refusals."""

import pytest

from detr_deploy.errors import DetrDeployError
from detr_deploy.io import atomic_output, check_output_path, sha256_of


def test_atomic_output_leaves_nothing_when_the_block_fails(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_output(target) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_output(target) as temporary:
        temporary.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and list(tmp_path.iterdir()) == [target]


def test_output_paths_that_cannot_be_written_or_are_inputs_are_refused(tmp_path):
    given = tmp_path / "model.onnx"
    given.write_bytes(b"x")
    with pytest.raises(DetrDeployError, match="also an input"):
        check_output_path(given, inputs=[given])
    with pytest.raises(DetrDeployError, match="also an input"):
        check_output_path(tmp_path / "." / "model.onnx", inputs=[None, str(given)])
    with pytest.raises(DetrDeployError, match="is a directory"):
        check_output_path(tmp_path)
    with pytest.raises(DetrDeployError, match="does not exist"):
        check_output_path(tmp_path / "missing" / "x.onnx")
    with pytest.raises(DetrDeployError, match="not writable"):
        check_output_path("/proc/x.onnx")
    assert check_output_path(tmp_path / "new.onnx", inputs=[given]) == tmp_path / "new.onnx"
    assert list(tmp_path.iterdir()) == [given]  # the probe leaves nothing


def test_sha256_of_a_file(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert sha256_of(tmp_path / "f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
