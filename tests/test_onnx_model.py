"""Session settings of the in-process ONNX Runtime engine."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from service.onnx_model import make_session


def _matmul_graph(path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.eye(4, dtype=np.float32).ravel())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def test_sessions_do_not_spin_and_keep_the_thread_count(tmp_path):
    path = tmp_path / "m.onnx"
    _matmul_graph(path)
    for threads in (1, 2):
        session = make_session(path, threads)
        opts = session.get_session_options()
        # the encoder's and decoder's pools share the cores: an idle pool must not spin
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert opts.intra_op_num_threads == threads
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        np.testing.assert_array_equal(session.run(["y"], {"x": x})[0], x)
