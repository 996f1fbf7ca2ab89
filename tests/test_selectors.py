"""Contract and oracle tests of the built-in selectors and the selector registry."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hf_tokenprune.modeling import builtin_selectors, token_selectors
from hf_tokenprune.modeling.configuration_token_prune import TokenPruneConfig
from hf_tokenprune.modeling.selector_random import RandomConfig
from hf_tokenprune.modeling.token_selectors import TokenSelector, get_selector_class, register_selector

INPUT_DIM = 32
LLM_HIDDEN_SIZE = 64
LEARNED = ("visionselector", "autoselect", "reconstruction")
TRAINING_FREE = ("random", "uniform", "divprune", "dart")
BUILTINS = LEARNED + TRAINING_FREE


def make_selector(method: str, input_dim: int = INPUT_DIM, **config_fields) -> TokenSelector:
    torch.manual_seed(0)
    config = TokenPruneConfig(method=method, **config_fields)
    return get_selector_class(method)(config, input_dim, LLM_HIDDEN_SIZE).eval()


def random_features(num_tokens: int, dim: int = INPUT_DIM, seed: int = 0) -> torch.Tensor:
    return torch.randn(num_tokens, dim, generator=torch.Generator().manual_seed(seed))


def test_builtin_module_exports_every_builtin():
    assert set(BUILTINS) <= set(token_selectors.available_selectors())
    for method in BUILTINS:
        assert get_selector_class(method).__name__ in builtin_selectors.__all__


@pytest.mark.parametrize("method", BUILTINS)
@pytest.mark.parametrize(
    ("num_tokens", "num_keep", "grid_hw"),
    [(1, 1, None), (7, 1, None), (7, 7, None), (50, 13, (5, 10)), (64, 1, (8, 8)), (64, 64, (8, 8)), (30, 29, None)],
)
def test_select_returns_num_keep_unique_ascending_indices(method, num_tokens, num_keep, grid_hw):
    selector = make_selector(method)
    keep_indices = selector.select(random_features(num_tokens), num_keep, grid_hw=grid_hw)
    assert keep_indices.dtype == torch.int64
    assert keep_indices.shape == (num_keep,)
    assert torch.unique(keep_indices).numel() == num_keep
    assert bool((keep_indices.diff() > 0).all())
    assert 0 <= int(keep_indices.min()) and int(keep_indices.max()) < num_tokens


@pytest.mark.parametrize("method", BUILTINS)
@pytest.mark.parametrize("num_keep", [0, 8])
def test_select_rejects_num_keep_outside_range(method, num_keep):
    with pytest.raises(ValueError, match="num_keep|`k`"):
        make_selector(method).select(random_features(7), num_keep)


@pytest.mark.parametrize("method", LEARNED)
def test_learned_selectors_have_trainable_parameters(method):
    selector = make_selector(method)
    assert type(selector).trainable
    parameters = list(selector.parameters())
    assert parameters and all(parameter.requires_grad for parameter in parameters)
    selector.score(random_features(10)).sum().backward()
    assert all(
        parameter.grad is not None for name, parameter in selector.named_parameters() if name != "mask_embedding"
    )


@pytest.mark.parametrize("method", TRAINING_FREE)
def test_training_free_selectors_have_no_parameters(method):
    selector = make_selector(method)
    assert not type(selector).trainable
    assert list(selector.parameters()) == []
    assert selector.feature_source == "projector_output"


def test_default_feature_sources():
    assert make_selector("visionselector").feature_source == "projector_output"
    assert make_selector("autoselect").feature_source == "vision_features"
    assert make_selector("reconstruction").feature_source == "vision_features"
    assert make_selector("autoselect", feature_source="projector_output").feature_source == "projector_output"


# --- visionselector -------------------------------------------------------------------------------------


def test_visionselector_score_matches_explicit_attention_matrix():
    selector = make_selector("visionselector").double()
    torch.nn.init.normal_(selector.query_proj.weight, std=0.2)
    torch.nn.init.normal_(selector.key_proj.weight, std=0.2)
    features = random_features(40).double()
    queries = features @ selector.query_proj.weight.T
    keys = features @ selector.key_proj.weight.T
    # Eq. 2 as written: the full N x N matrix, averaged over its columns.
    attention = queries @ keys.T / math.sqrt(queries.shape[-1])
    expected = attention.mean(dim=1)
    torch.testing.assert_close(selector.score(features), expected, rtol=1e-5, atol=1e-5)
    assert expected.std() > 1e-2


def test_visionselector_sizes_follow_config_and_llm_width():
    assert make_selector("visionselector").projection_dim == LLM_HIDDEN_SIZE // 2
    assert make_selector("visionselector", scorer_hidden_size=24).query_proj.out_features == 24


def test_visionselector_init_is_near_zero():
    selector = make_selector("visionselector")
    for weight in (selector.query_proj.weight, selector.key_proj.weight):
        assert weight.std() < 3 * selector.config.scorer_init_std
    with torch.no_grad():
        assert selector.score(random_features(100)).abs().max() < 1e-3


def count_flops(selector: TokenSelector, features: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        selector.score(features)
    return counter.get_total_flops()


def test_visionselector_flops_grow_linearly_in_tokens():
    selector = make_selector("visionselector", input_dim=64)
    flops_n = count_flops(selector, random_features(512, dim=64))
    flops_2n = count_flops(selector, random_features(1024, dim=64))
    assert flops_n > 0
    assert flops_2n <= 2.2 * flops_n


def test_visionselector_per_token_cost_does_not_grow_with_projection_width():
    # The key is folded into W_q (s_i = v_i . W_q^T mean_j k_j): each extra token costs O(D), not O(D d).
    narrow = make_selector("visionselector", input_dim=64, scorer_hidden_size=8)
    wide = make_selector("visionselector", input_dim=64, scorer_hidden_size=512)
    for selector in (narrow, wide):
        extra = count_flops(selector, random_features(1024, dim=64)) - count_flops(
            selector, random_features(512, dim=64)
        )
        assert extra <= 4 * 512 * 64  # a few multiply-adds per token and input dimension
    # Projecting every query would have cost 2 x 512 tokens x 64 x 512 flops more at d = 512.
    assert count_flops(wide, random_features(1024, dim=64)) < 2 * 1024 * 64 * 512 / 8


def test_visionselector_gradients_match_explicit_attention_matrix():
    selector = make_selector("visionselector").double()
    torch.nn.init.normal_(selector.query_proj.weight, std=0.2)
    torch.nn.init.normal_(selector.key_proj.weight, std=0.2)
    features = random_features(40).double().requires_grad_(True)
    weights = torch.linspace(-1, 1, 40, dtype=torch.float64)  # any linear read-out of the scores
    (selector.score(features) * weights).sum().backward()
    folded = [features.grad, selector.query_proj.weight.grad, selector.key_proj.weight.grad]
    for tensor in (features, selector.query_proj.weight, selector.key_proj.weight):
        tensor.grad = None
    queries = features @ selector.query_proj.weight.T
    keys = features @ selector.key_proj.weight.T
    ((queries @ keys.T / math.sqrt(queries.shape[-1])).mean(dim=1) * weights).sum().backward()
    explicit = [features.grad, selector.query_proj.weight.grad, selector.key_proj.weight.grad]
    for got, expected in zip(folded, explicit, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


# --- autoselect / reconstruction --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["autoselect", "reconstruction"])
def test_transformer_scores_are_permutation_equivariant(method):
    selector = make_selector(method)
    features = random_features(24)
    permutation = torch.randperm(24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        scores = selector.score(features)
        permuted_scores = selector.score(features[permutation])
    torch.testing.assert_close(permuted_scores, scores[permutation], rtol=1e-5, atol=1e-5)
    assert scores.std() > 1e-4


def test_transformer_depths_and_widths():
    assert len(make_selector("autoselect").encoder.layers) == 2
    assert len(make_selector("reconstruction").encoder.layers) == 4
    assert len(make_selector("autoselect", scorer_num_layers=3).encoder.layers) == 3
    assert make_selector("autoselect").head.in_features == INPUT_DIM
    assert make_selector("autoselect", input_dim=2048).head.in_features == 256
    assert make_selector("reconstruction", input_dim=2048).head.in_features == 128
    assert make_selector("questionselector").projection_dim == LLM_HIDDEN_SIZE // 4
    assert make_selector("visionselector").query_proj.out_features == LLM_HIDDEN_SIZE // 2


@pytest.mark.parametrize(
    ("method", "fields"),
    [
        ("autoselect", ("scorer_hidden_size", "scorer_num_layers", "scorer_num_heads")),
        ("reconstruction", ("scorer_hidden_size", "scorer_num_layers", "scorer_num_heads")),
        ("questionselector", ("scorer_hidden_size",)),
    ],
)
def test_a_built_selector_records_its_default_sizes_in_its_config(method, fields):
    """A saved adapter must rebuild at the sizes it was trained at even if the defaults change: the config a pruned
    model carries (and saves) names them; an explicit size is kept."""
    from hf_tokenprune import testing
    from hf_tokenprune.model import get_pruned_model

    base = testing.tiny_qwen2_5_vl()
    pruned = get_pruned_model(base, TokenPruneConfig(method=method))
    config = pruned.token_prune_config
    selector = pruned.token_selector
    built = {"scorer_hidden_size": getattr(selector, "hidden_size", getattr(selector, "projection_dim", None))}
    if "scorer_num_layers" in fields:
        built["scorer_num_layers"] = len(selector.encoder.layers)
        built["scorer_num_heads"] = selector.encoder.layers[0].self_attn.num_heads
    assert {name: getattr(config, name) for name in fields} == built
    explicit = get_pruned_model(base, TokenPruneConfig(method=method, scorer_hidden_size=8))
    assert explicit.token_prune_config.scorer_hidden_size == 8
    assert make_selector("autoselect", scorer_hidden_size=48).head.in_features == 48
    with pytest.raises(ValueError, match="scorer_hidden_size"):
        make_selector("autoselect", scorer_hidden_size=30, scorer_num_heads=4)


@pytest.mark.parametrize(
    ("method", "input_dim", "fields", "width", "heads"),
    [
        ("autoselect", 1024, {}, 256, 2),  # the 7B presets' default: heads of 128
        ("reconstruction", 1024, {}, 128, 1),
        ("autoselect", 100, {}, 100, 1),  # narrower than 128: one head
        ("autoselect", 1024, {"scorer_hidden_size": 384}, 384, 3),
        ("autoselect", 1024, {"scorer_hidden_size": 1000}, 1000, 5),  # 7 heads do not divide 1000: the largest that do
        ("autoselect", 1024, {"scorer_num_heads": 4}, 256, 4),  # an explicit count is kept (format 1's default)
        ("reconstruction", 30, {"scorer_num_heads": 4}, 32, 4),  # ... and the width rounded up to a multiple of it
        ("autoselect", 1024, {"scorer_hidden_size": 1024, "scorer_num_heads": 16}, 1024, 16),  # paper 002 A
    ],
)
def test_transformer_scorer_heads_default_to_width_over_128(method, input_dim, fields, width, heads):
    """Oracle: the layers as built (width of the input projection, heads of every attention) against the rule
    written out: explicit sizes as given, else width // 128 heads, at least 1, lowered until they divide the width."""
    selector = make_selector(method, input_dim=input_dim, **fields)
    assert selector.encoder.input_proj.out_features == width
    assert {layer.self_attn.num_heads for layer in selector.encoder.layers} == {heads}
    assert selector.resolved_config(TokenPruneConfig(method=method, **fields)).scorer_num_heads == heads


@pytest.mark.parametrize("training", [False, True])
def test_token_transformer_matches_stock_encoder_layers(training):
    """Oracle: the stock `nn.TransformerEncoderLayer`s run on each segment alone (their own forward, fast path in
    eval) give the states that `forward_padded` gives for the segments padded together."""
    from hf_tokenprune.modeling.selector_autoselect import TokenTransformer

    torch.manual_seed(0)
    encoder = TokenTransformer(INPUT_DIM, 48, num_layers=2, num_heads=4).train(training)
    lengths = (7, 12, 3)
    features = torch.randn(len(lengths), max(lengths), INPUT_DIM, generator=torch.Generator().manual_seed(2))
    token_mask = torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]
    with torch.set_grad_enabled(training):
        padded = encoder.forward_padded(features, token_mask)
        for row, length in enumerate(lengths):
            hidden = encoder.input_proj(features[row : row + 1, :length])
            for layer in encoder.layers:
                hidden = layer(hidden)
            torch.testing.assert_close(padded[row, :length], encoder.final_norm(hidden)[0], rtol=1e-5, atol=1e-5)
        # Unpadded input takes the mask-free path.
        torch.testing.assert_close(encoder.forward_padded(features[1:2], None), padded[1:2], rtol=1e-5, atol=1e-5)
    if training:  # gradients flow to every parameter
        padded[token_mask].sum().backward()
        assert all(parameter.grad is not None for parameter in encoder.parameters())


def test_reconstruction_score_is_keep_minus_drop_logit():
    selector = make_selector("reconstruction")
    features = random_features(12)
    with torch.no_grad():
        logits = selector.keep_logits(features)
        scores = selector.score(features)
    assert logits.shape == (12, 2)
    torch.testing.assert_close(scores, logits[:, 1] - logits[:, 0])
    assert selector.mask_embedding.shape == (INPUT_DIM,)
    assert selector.mask_embedding.requires_grad


# --- random / uniform ------------------------------------------------------------------------------------


def test_random_is_reproducible_per_seed():
    features = random_features(100)
    first = make_selector("random", seed=3).select(features, 10)
    assert torch.equal(first, make_selector("random", seed=3).select(features, 10))
    assert not torch.equal(first, make_selector("random", seed=4).select(features, 10))
    generator_a = torch.Generator().manual_seed(11)
    generator_b = torch.Generator().manual_seed(11)
    selector = make_selector("random", seed=3)
    assert torch.equal(
        selector.select(features, 10, generator=generator_a), selector.select(features, 10, generator=generator_b)
    )


def grid_covering_radius(keep_indices: torch.Tensor, rows: int, cols: int) -> int:
    """Largest Chebyshev distance from any grid cell to its nearest kept cell."""
    cell_rows, cell_cols = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    kept_rows, kept_cols = keep_indices // cols, keep_indices % cols
    distance = torch.maximum((cell_rows.reshape(-1, 1) - kept_rows).abs(), (cell_cols.reshape(-1, 1) - kept_cols).abs())
    return int(distance.min(dim=1).values.max())


@pytest.mark.parametrize(("rows", "cols"), [(24, 24), (16, 30)])
def test_uniform_spreads_over_the_grid(rows, cols):
    selector = make_selector("uniform")
    num_tokens = rows * cols
    features = torch.zeros(num_tokens, INPUT_DIM)
    # Every small budget (where a bad layout shows most) and a stride through the rest.
    for num_keep in [*range(1, 65), *range(65, num_tokens, 11), num_tokens]:
        keep_indices = selector.select(features, num_keep, grid_hw=(rows, cols))
        assert torch.unique(keep_indices).numel() == num_keep
        # Evenly spread points leave no cell farther than about the spacing sqrt(N / k) from a kept one.
        assert grid_covering_radius(keep_indices, rows, cols) <= 1.5 * math.sqrt(num_tokens / num_keep)
        if num_keep >= 4:
            top, left = keep_indices // cols < rows / 2, keep_indices % cols < cols / 2
            for quadrant in (top & left, top & ~left, ~top & left, ~top & ~left):
                assert quadrant.any(), f"num_keep={num_keep} leaves a quadrant empty"


def test_uniform_exact_sub_grid_and_1d_fallback():
    selector = make_selector("uniform")
    keep_indices = selector.select(torch.zeros(576, INPUT_DIM), 16, grid_hw=(24, 24))
    centres = torch.tensor([3, 9, 15, 21])
    assert torch.equal(keep_indices, (centres[:, None] * 24 + centres[None, :]).flatten())
    # Without a grid the same budget lands in one column of the 24 x 24 image: what the grid path avoids.
    one_dimensional = selector.select(torch.zeros(576, INPUT_DIM), 24)
    assert torch.equal(one_dimensional, torch.arange(24) * 24 + 12)
    assert grid_covering_radius(one_dimensional, 24, 24) > 1.5 * math.sqrt(576 / 24)
    assert torch.equal(selector.select(torch.zeros(10, 4), 5, grid_hw=(3, 3)), torch.tensor([1, 3, 5, 7, 9]))


# --- divprune --------------------------------------------------------------------------------------------


def brute_force_max_min_greedy(features: torch.Tensor, num_keep: int) -> set[int]:
    """DivPrune's greedy written directly on the full cosine-distance matrix."""
    unit = features.double() / features.double().norm(dim=1, keepdim=True)
    distance = 1.0 - unit @ unit.T
    num_tokens = features.shape[0]
    off_diagonal = distance + torch.diag(torch.full((num_tokens,), math.inf, dtype=torch.float64))
    selected = [int(off_diagonal.min(dim=1).values.argmax())]
    while len(selected) < num_keep:
        candidates = [index for index in range(num_tokens) if index not in selected]
        gaps = [min(float(distance[candidate, chosen]) for chosen in selected) for candidate in candidates]
        selected.append(candidates[max(range(len(candidates)), key=gaps.__getitem__)])
    return set(selected)


@pytest.mark.parametrize("num_keep", [1, 2, 9, 30, 60])
def test_divprune_matches_brute_force_greedy(num_keep):
    features = random_features(60, dim=16, seed=5)
    keep_indices = make_selector("divprune").select(features, num_keep)
    assert set(keep_indices.tolist()) == brute_force_max_min_greedy(features, num_keep)


def clustered_features(num_clusters: int, per_cluster: int, dim: int = INPUT_DIM) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    centres = torch.randn(num_clusters, dim, generator=generator)
    cluster_ids = torch.arange(num_clusters).repeat_interleave(per_cluster)
    features = centres[cluster_ids] + 0.01 * torch.randn(num_clusters * per_cluster, dim, generator=generator)
    shuffle = torch.randperm(features.shape[0], generator=generator)
    return features[shuffle], cluster_ids[shuffle]


def test_divprune_covers_every_cluster_before_repeating_one():
    features, cluster_ids = clustered_features(num_clusters=6, per_cluster=15)
    selector = make_selector("divprune")
    for num_keep in range(1, 7):
        kept_clusters = cluster_ids[selector.select(features, num_keep)]
        assert torch.unique(kept_clusters).numel() == num_keep


# --- dart ------------------------------------------------------------------------------------------------


def test_dart_drops_copies_of_a_pivot_and_keeps_distinct_tokens():
    distinct = random_features(10, seed=7)
    pivot = 10.0 * random_features(1, seed=8)
    # Layout: pivot at 0, its copies at 1-4, distinct tokens at 5-14.
    features = torch.cat([pivot, pivot.repeat(4, 1), distinct])
    keep_indices = make_selector("dart", dart_num_pivots=1).select(features, 11)
    assert keep_indices.tolist() == [0, *range(5, 15)]


def test_dart_drops_near_duplicates_of_every_pivot():
    generator = torch.Generator().manual_seed(9)
    pivots = 10.0 * torch.randn(2, INPUT_DIM, generator=generator)
    near_copies = 0.5 * pivots.repeat(3, 1) + 1e-3 * torch.randn(6, INPUT_DIM, generator=generator)
    distinct = torch.randn(8, INPUT_DIM, generator=generator)
    # Layout: near-copies at 0-5, distinct tokens at 6-13, pivots at 14-15 (largest norm wherever they sit).
    features = torch.cat([near_copies, distinct, pivots])
    keep_indices = make_selector("dart", dart_num_pivots=2).select(features, 10)
    assert keep_indices.tolist() == [*range(6, 16)]
    # With fewer slots than pivots, only the largest-norm pivot is kept.
    largest = 14 + int(pivots.norm(dim=1).argmax())
    assert make_selector("dart", dart_num_pivots=2).select(features, 1).tolist() == [largest]


# --- registry --------------------------------------------------------------------------------------------


@pytest.fixture
def isolated_registry(monkeypatch):
    monkeypatch.setattr(token_selectors, "_SELECTORS", dict(token_selectors._SELECTORS))


def test_duplicate_registration_raises_naming_it(isolated_registry):
    with pytest.raises(ValueError, match="'divprune'"):
        register_selector("divprune", RandomConfig, builtin_selectors.RandomSelector)


def test_unknown_selector_lists_registered_names():
    with pytest.raises(ValueError, match="'nope'") as error:
        get_selector_class("nope")
    for method in BUILTINS:
        assert method in str(error.value)


def test_third_party_selector_registers_and_selects(isolated_registry):
    class LastTokensSelector(TokenSelector):
        def score(self, features: torch.Tensor) -> torch.Tensor:
            return torch.arange(features.shape[0], dtype=torch.float32)

    @dataclass
    class LastTokensConfig(TokenPruneConfig):
        method: str = "last_tokens"

    register_selector("last_tokens", LastTokensConfig, LastTokensSelector)
    assert "last_tokens" in token_selectors.available_selectors()
    selector = get_selector_class("last_tokens")(TokenPruneConfig(method="last_tokens"), INPUT_DIM, LLM_HIDDEN_SIZE)
    assert selector.select(random_features(9), 3).tolist() == [6, 7, 8]


# ---------------------------------------------------------------- questionselector (reads the prompt)
def make_question_selector(**config_fields) -> TokenSelector:
    return make_selector("questionselector", input_dim=LLM_HIDDEN_SIZE, **config_fields)


@pytest.mark.parametrize("prompt_length", [7, 20])  # d = 16: folded into W_q below d - 1 prompt tokens, else not
def test_questionselector_score_matches_explicit_cross_attention(prompt_length):
    selector = make_question_selector().double()
    for projection in (selector.query_proj, selector.key_proj, selector.text_proj):
        torch.nn.init.normal_(projection.weight, std=0.2)
    features, prompt = (
        random_features(30, LLM_HIDDEN_SIZE).double(),
        random_features(prompt_length, LLM_HIDDEN_SIZE, 1).double(),
    )
    d = selector.projection_dim
    expected = torch.empty(30, dtype=torch.float64)
    keys = features @ selector.key_proj.weight.T
    text = prompt @ selector.text_proj.weight.T
    for i in range(30):  # token by token, as the docstring writes it
        query = selector.query_proj.weight @ features[i]
        weights = torch.softmax(torch.stack([query @ text[m] for m in range(prompt_length)]) / math.sqrt(d), dim=0)
        context = sum(weights[m] * text[m] for m in range(prompt_length))
        expected[i] = query @ (keys.mean(0) + context) / math.sqrt(d)
    torch.testing.assert_close(selector.score(features, prompt), expected, rtol=1e-9, atol=1e-9)
    # Without any text token there is no context: the visionselector term alone.
    alone = (features @ selector.query_proj.weight.T) @ keys.mean(0) / math.sqrt(d)
    torch.testing.assert_close(selector.score(features, prompt[:0]), alone, rtol=1e-9, atol=1e-9)


def test_questionselector_keeps_what_the_question_names():
    """With W_q = W_t = I and W_k = 0, a visual token scores its softmax-weighted match to the prompt's words: the
    token that shows the asked word wins, and another question picks another token."""
    selector = make_question_selector(scorer_hidden_size=LLM_HIDDEN_SIZE)
    with torch.no_grad():
        selector.query_proj.weight.copy_(torch.eye(LLM_HIDDEN_SIZE))
        selector.text_proj.weight.copy_(torch.eye(LLM_HIDDEN_SIZE))
        selector.key_proj.weight.zero_()
    words = 3 * torch.eye(LLM_HIDDEN_SIZE)[:6]  # six orthogonal "word embeddings"
    template = 3 * torch.eye(LLM_HIDDEN_SIZE)[10:12]  # words of the chat template, shown nowhere
    image = torch.cat([words, 0.1 * random_features(20, LLM_HIDDEN_SIZE)])  # one token per word, then background
    for asked in range(6):
        prompt = torch.cat([template, words[asked : asked + 1]])
        (kept,) = selector.select_segments([image], [1], prompt_embeds=[prompt])
        assert kept.tolist() == [asked]


def test_questionselector_batch_with_padding_equals_one_by_one():
    selector = make_question_selector()
    for projection in (selector.query_proj, selector.key_proj, selector.text_proj):
        torch.nn.init.normal_(projection.weight, std=0.3, generator=torch.Generator().manual_seed(3))
    segments = [random_features(n, LLM_HIDDEN_SIZE, seed=n) for n in (12, 5, 9)]
    prompts = [random_features(m, LLM_HIDDEN_SIZE, seed=100 + m) for m in (4, 11, 0)]
    batched = selector.select_segments(segments, [3, 2, 4], prompt_embeds=prompts)
    scores = selector.score_segments(segments, prompt_embeds=prompts)
    for segment, prompt, keep, kept, score in zip(segments, prompts, [3, 2, 4], batched, scores, strict=True):
        alone = selector.score(segment, prompt)
        torch.testing.assert_close(score, alone, atol=1e-5, rtol=1e-5)
        assert kept.tolist() == sorted(torch.sort(alone, descending=True, stable=True).indices[:keep].tolist())


def test_questionselector_refuses_a_missing_or_misshapen_prompt():
    selector = make_question_selector()
    features = random_features(8, LLM_HIDDEN_SIZE)
    with pytest.raises(ValueError, match="prompt_embeds"):
        selector.select_segments([features], [2])
    with pytest.raises(ValueError, match="prompt"):
        selector.select(features, 2)
    with pytest.raises(ValueError, match=f"prompt_embeds.*\\(M, {LLM_HIDDEN_SIZE}\\)"):
        selector.select_segments([features], [2], prompt_embeds=[random_features(3, 5)])
    with pytest.raises(ValueError, match="one \\(M, D\\) prompt per segment"):
        selector.select_segments([features], [2], prompt_embeds=[])
    assert selector.uses_prompt and selector.produces_scores() and selector.trainable
