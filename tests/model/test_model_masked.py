"""The masked forward: static-shape masked RMSNorm, and 0/1 masks equal a physically smaller HF model."""
import pytest
import torch

from megadrp.kernels import ops
from megadrp.model import get_family, load_pretrained, read_hf_state_dict
from tests.helpers.tiny_models import make_tiny_hf_model


def test_masked_rmsnorm_equals_rmsnorm_over_kept_dims():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 5, 64, generator=g), 1 + 0.3 * torch.randn(64, generator=g)
    z = (torch.rand(64, generator=g) > 0.4).float() * torch.rand(64, generator=g).clamp_min(0.1)  # soft kept values
    keep = z != 0
    out = ops.masked_rmsnorm(x, w, 1e-6, z)
    xs = x[..., keep]
    sliced = w[keep] * xs * torch.rsqrt(xs.pow(2).mean(-1, keepdim=True) + 1e-6) * z[keep]
    torch.testing.assert_close(out[..., keep], sliced, rtol=0, atol=1e-6)
    assert torch.all(out[..., ~keep] == 0)


def _slice_hf(sd, shape, keep_layers, keep_groups, keep_int, keep_d):
    """A hand-written slice of an HF state dict to the kept units (independent of megadrp's export)."""
    r, hd = shape.heads_per_group, shape.head_dim
    out = {"model.embed_tokens.weight": sd["model.embed_tokens.weight"][:, keep_d],
           "model.norm.weight": sd["model.norm.weight"][keep_d], "lm_head.weight": sd["lm_head.weight"][:, keep_d]}
    for new, old in enumerate(keep_layers):
        p, q = f"model.layers.{old}.", f"model.layers.{new}."
        groups = keep_groups[old]
        q_rows = torch.cat([torch.arange(g * r * hd, (g + 1) * r * hd) for g in groups])
        kv_rows = torch.cat([torch.arange(g * hd, (g + 1) * hd) for g in groups])
        m = keep_int[old]
        out[q + "input_layernorm.weight"] = sd[p + "input_layernorm.weight"][keep_d]
        out[q + "post_attention_layernorm.weight"] = sd[p + "post_attention_layernorm.weight"][keep_d]
        out[q + "self_attn.q_proj.weight"] = sd[p + "self_attn.q_proj.weight"][q_rows][:, keep_d]
        for n in ("k", "v"):
            out[q + f"self_attn.{n}_proj.weight"] = sd[p + f"self_attn.{n}_proj.weight"][kv_rows][:, keep_d]
        if shape.attention_bias:
            out[q + "self_attn.q_proj.bias"] = sd[p + "self_attn.q_proj.bias"][q_rows]
            out[q + "self_attn.k_proj.bias"] = sd[p + "self_attn.k_proj.bias"][kv_rows]
            out[q + "self_attn.v_proj.bias"] = sd[p + "self_attn.v_proj.bias"][kv_rows]
        out[q + "self_attn.o_proj.weight"] = sd[p + "self_attn.o_proj.weight"][keep_d][:, q_rows]
        out[q + "mlp.gate_proj.weight"] = sd[p + "mlp.gate_proj.weight"][m][:, keep_d]
        out[q + "mlp.up_proj.weight"] = sd[p + "mlp.up_proj.weight"][m][:, keep_d]
        out[q + "mlp.down_proj.weight"] = sd[p + "mlp.down_proj.weight"][keep_d][:, m]
    return out


@pytest.mark.parametrize("family,heads,kv", [("llama", 4, 2), ("qwen2", 4, 4)])
def test_binary_masks_equal_sliced_hf_model(tmp_path, family, heads, kv):
    import transformers

    path = make_tiny_hf_model(tmp_path, family, heads, kv, seed=5, with_tokenizer=False)
    model = load_pretrained(path).eval()
    s, g = model.shape, torch.Generator().manual_seed(1)
    L, G, m, d = s.num_hidden_layers, s.num_key_value_heads, s.intermediate_size, s.hidden_size
    keep_layers = [0, 1, 3]
    keep_groups = [sorted(torch.randperm(G, generator=g)[: G // 2].tolist()) for _ in range(L)]
    keep_int = [torch.randperm(m, generator=g)[:80].sort().values for _ in range(L)]
    keep_d = torch.randperm(d, generator=g)[:40].sort().values
    masks = {"layer": torch.zeros(L), "head": torch.zeros(L, G), "intermediate": torch.zeros(L, m),
             "hidden": torch.zeros(d)}
    masks["layer"][keep_layers] = 1
    masks["hidden"][keep_d] = 1
    for i in range(L):
        masks["head"][i, keep_groups[i]] = 1
        masks["intermediate"][i, keep_int[i]] = 1
    small = s.replace(num_hidden_layers=3, num_key_value_heads=G // 2, num_attention_heads=heads // 2,
                      intermediate_size=80, hidden_size=40)
    fam = get_family(family)
    hf = getattr(transformers, fam.architecture)(getattr(transformers, fam.config_class)(
        **fam.hf_config_dict(small))).eval()
    hf.load_state_dict(_slice_hf(read_hf_state_dict(path), s, keep_layers, keep_groups, keep_int, keep_d))
    ids = torch.randint(0, 512, (2, 13), generator=g)
    with torch.no_grad():
        diff = (model(ids, masks) - hf(ids).logits).abs().max()
    assert diff <= 1e-5
