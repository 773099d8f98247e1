"""The bundle's defaults follow the precision its engine runs at (docs/export.md, "Precision and parity")."""

import pytest

from rlivs.export.bundle import ExportConfig


def test_embedding_table_dtype_follows_the_engine_precision():
    # ONNX Runtime runs float32: the table stays float32, so the bundle's captions are the reference's
    assert ExportConfig().embed_dtype == "float32"
    # a TensorRT bundle runs in half precision anyway (float16 cache): a float16 table costs nothing more ...
    assert (ExportConfig(target="tensorrt").kv_dtype, ExportConfig(target="tensorrt").embed_dtype) == (
        "float16", "float16")
    # ... unless exact parity is asked for with a float32 cache
    assert ExportConfig(target="tensorrt", kv_dtype="float32").embed_dtype == "float32"
    # an explicit choice wins; a bad one is refused with the choices
    assert ExportConfig(embed_dtype="float16").embed_dtype == "float16"
    with pytest.raises(ValueError, match="embed_dtype must be float16 or float32"):
        ExportConfig(embed_dtype="bfloat16")
