import pytest
import torch

from router.prototypes import adapter_prototypes, top_right_singular_vector


@pytest.mark.parametrize("r,d_in,d_out", [(1, 16, 8), (4, 64, 192), (8, 192, 64), (16, 64, 64)])
def test_prototype_equals_dense_svd_up_to_sign(r, d_in, d_out):
    g = torch.Generator().manual_seed(r * d_in)
    a, b = torch.randn(r, d_in, generator=g), torch.randn(d_out, r, generator=g)
    v, s = top_right_singular_vector(a, b)
    _, s_ref, vh = torch.linalg.svd((b @ a).double())
    ref = vh[0].float()
    assert torch.allclose(v.abs(), ref.abs(), atol=1e-4) and abs(float(v @ ref)) == pytest.approx(1.0, abs=1e-5)
    assert s == pytest.approx(float(s_ref[0]), rel=1e-6)


def test_prototypes_per_module_of_a_real_peft_layout():
    g = torch.Generator().manual_seed(0)
    a = {(0, "q_proj"): torch.randn(8, 32, generator=g), (1, "v_proj"): torch.randn(8, 32, generator=g)}
    b = {(0, "q_proj"): torch.randn(32, 8, generator=g), (1, "v_proj"): torch.randn(16, 8, generator=g)}
    protos = adapter_prototypes(a, b)
    assert set(protos) == set(a)
    for key, v in protos.items():
        assert v.shape == (32,) and float(v.norm()) == pytest.approx(1.0, abs=1e-5)
        dense = b[key] @ a[key]
        assert float((dense @ v).norm()) == pytest.approx(float(torch.linalg.matrix_norm(dense, ord=2)), rel=1e-4)
