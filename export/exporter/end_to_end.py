"""The end-to-end detector: patch selection inside the ONNX graph (`dgsnet export --end-to-end`).

The preprocessing graph is written with onnx.helper (no torch): raw RGB uint8 (H, W, 3), or
(N, H, W, 3) of one shared size for the batched variant, with H and W dynamic ->
dgsnet.image.preprocess's definition in float32 ONNX ops that onnxruntime and TensorRT both run:

  mirror padding + top-left crop   index arithmetic (Mod / Where) and Gather: numpy's "symmetric"
                                   padding is periodic with period 2H, reflected in its second half
  grey                             GREY_WEIGHTS / 255 folded into the first DFT matrix
  32x32 DFT                        two constant matrix products (real FFT along x, full DFT along
                                   y), power = Re^2 + Im^2, entropy in bits
  ranking                          TopK on the entropy rounded to 2^-RANK_BITS bits (mirrored patches,
                                   equal in exact arithmetic, then tie and rank by raster index as
                                   numpy's rounded keys do); the 25 highest come from the reversed
                                   list, so equal keys rank higher at the higher index there too
  tile + normalise                 Gather of the 49 patches in raster order, 7x7 tiling, (x*scale+bias)

It is then joined to the verified encoder export (images (N, 3, 224, 224) -> logits, probabilities).
Outputs: logits, probabilities, patch_indices (raster indices in the padded/cropped image: the 24
lowest-entropy patches, then the 25 highest, each ascending; the tile holds all 49 sorted, row by
row) and patch_grid ([rows, cols] of that image's patch grid; (N, 2) in the batched variant).

Float32 entropies may order two near-equal patches differently from numpy's float64 keys; the
verification (`verify_end_to_end`) counts those images and bounds their probability difference.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from dgsnet.image.preprocess import EPS, GREY_WEIGHTS, GRID, N_HIGH, N_LOW, N_SELECT, PATCH, TILE

from .spec import ExportReport

#: Entropies are ranked on a grid of 2^-RANK_BITS bits (3.8e-6): at least 4 float32 ulps of an
#: entropy (<= 10 bits), so mirrored patches' equal entropies mostly share a key, yet fine enough that
#: distinct entropies rarely merge. Measured on the verification corpus (30 images): 12 bits gave 3
#: selections unlike numpy's, 14 bits 1, 17 bits 2, 18 bits none, 24 bits 2 (exact ties split).
RANK_BITS = 18
#: A selection differing from numpy's is a float32 tie when the swapped patches' exact entropies
#: are this close (bits): dgsnet.image.preprocess.FAST_ENTROPY_TOL, its bound on float32 entropy
#: error; anything further apart is a bug, not rounding.
TIE_TOL = 1e-3
TIE_PROB_TOL = 1e-3  # probability difference allowed where the selection differs by a tie
PROB_TOL = 1e-4  # elsewhere
SINGLE_INPUT, BATCH_INPUT = "image", "images"
EXTRA_OUTPUTS = ("patch_indices", "patch_grid")
ENCODER_INPUT = "images"
_P = "e2e/"  # prefix of every preprocessing name: no clash with the encoder's


def _dft_constants():
    """Stage 1: grey and real FFT along x of each patch row of RGB pixels as [Re | Im] (96 x 34, grey
    weights / 255 folded in);
    stage 2: the full DFT along y as [cos | -sin] (32 x 64); weights of the 17 rfft frequencies."""
    m = np.arange(PATCH)
    half = PATCH // 2 + 1
    angle = 2 * np.pi * np.outer(m, np.arange(half)) / PATCH
    stage1 = np.concatenate([np.cos(angle), -np.sin(angle)], axis=1) / 255.0
    # rows x*3 + c: the grey weight of channel c times the DFT row of pixel x (RGB interleaved)
    stage1 = (stage1[:, None, :] * np.asarray(GREY_WEIGHTS)[None, :, None]).reshape(3 * PATCH, 2 * half)
    angle2 = 2 * np.pi * np.outer(m, m) / PATCH
    stage2 = np.concatenate([np.cos(angle2), -np.sin(angle2)], axis=1)
    weight = np.full(half, 2.0)
    weight[0] = weight[-1] = 1.0
    return stage1.astype(np.float32), stage2.astype(np.float32), weight.astype(np.float32)


def preprocessing_graph(norm: dict, *, batched: bool, opset: int, rank_bits: int = RANK_BITS):
    """The ONNX model: raw uint8 image(s) -> normalised tiles (N, 3, 224, 224) + patch_indices, patch_grid."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    count = [0]

    def const(name, value, dtype=None):
        array = np.asarray(value, dtype=dtype)
        inits.append(numpy_helper.from_array(array, _P + name))
        return _P + name

    def op(kind, inputs, n_out=1, **attrs):
        count[0] += 1
        outs = [f"{_P}{kind.lower()}{count[0]}" + (f"_{i}" if n_out > 1 else "") for i in range(n_out)]
        nodes.append(helper.make_node(kind, list(inputs), outs, name=f"{_P}{kind}{count[0]}", **attrs))
        return outs[0] if n_out == 1 else outs

    i64 = np.int64
    stage1, stage2, weight = _dft_constants()
    half = PATCH // 2 + 1
    c = {k: const(k, v, i64) for k, v in {"0": [0], "1": [1], "2": [2], "3": [3], "32": [PATCH],
                                          "49": [N_SELECT], "224": [TILE], "m1": [-1]}.items()}
    scalar = {k: const("s" + k, v, i64) for k, v in {"0": 0, "1": 1}.items()}
    input_name = BATCH_INPUT if batched else SINGLE_INPUT
    x = input_name if batched else op("Unsqueeze", [input_name, c["0"]])  # (N, H, W, 3)

    shape = op("Shape", [x])
    n_img = op("Slice", [shape, c["0"], c["1"]])
    height = op("Slice", [shape, c["1"], c["2"]])
    width = op("Slice", [shape, c["2"], c["3"]])
    # Step 1: fewer than 49 whole patches -> mirror-pad each side shorter than 224 to 224.
    whole = op("Mul", [op("Div", [height, c["32"]]), op("Div", [width, c["32"]])])
    pad = op("Less", [whole, c["49"]])

    def axis_index(length):
        """Source pixel of each row (column) of the padded, cropped image, and the patch count."""
        padded = op("Where", [pad, op("Max", [length, c["224"]]), length])
        patches = op("Div", [padded, c["32"]])
        cropped = op("Mul", [patches, c["32"]])
        positions = op("Range", [scalar["0"], op("Squeeze", [cropped, c["0"]]), scalar["1"]])
        period = op("Mod", [positions, op("Mul", [length, c["2"]])])
        mirrored = op("Sub", [op("Sub", [op("Mul", [length, c["2"]]), c["1"]]), period])
        return op("Where", [op("Less", [period, length]), period, mirrored]), patches

    rows_src, rows = axis_index(height)
    cols_src, cols = axis_index(width)

    pixels = op("Cast", [x], to=TensorProto.FLOAT)  # (N, H, W, 3), exact integers
    # Padded: gather the mirrored rows and columns; else a plain crop (a Gather along an inner axis
    # costs as much as the whole entropy pass on large images).
    padded_branch = helper.make_graph(
        [helper.make_node("Gather", [pixels, rows_src], [_P + "p_rows"], axis=1),
         helper.make_node("Gather", [_P + "p_rows", cols_src], [_P + "p_padded"], axis=2)],
        "mirror_pad", [], [helper.make_tensor_value_info(_P + "p_padded", TensorProto.FLOAT, None)])
    crop_end = op("Concat", [op("Mul", [rows, c["32"]]), op("Mul", [cols, c["32"]])], axis=0)
    cropped_branch = helper.make_graph(
        [helper.make_node("Slice", [pixels, const("zero2", [0, 0], i64), crop_end, const("axes12", [1, 2], i64)],
                          [_P + "p_cropped"])],
        "crop", [], [helper.make_tensor_value_info(_P + "p_cropped", TensorProto.FLOAT, None)])
    prepared = op("If", [op("Squeeze", [pad, c["0"]])], then_branch=padded_branch, else_branch=cropped_branch)

    # Steps 3-4: spectral entropy of every patch, in float32. Stage 1 takes the 32 RGB pixels of a
    # patch row as they lie in memory (96 values) and folds the grey conversion into its matrix;
    # both stages are right-multiplications, so each is one large GEMM (no per-patch GEMMs, and no
    # separate grey pass over the image, which cost more than the DFT).
    segments = op("Reshape", [prepared, op("Concat", [n_img, op("Mul", [rows, c["32"]]), cols,
                                                      const("rgb_row", [3 * PATCH], i64)], axis=0)])
    rfft = op("MatMul", [segments, const("stage1", stage1)])  # (N, Hc, cols, 34): [Re | Im] of each row's rfft
    grid5 = op("Concat", [n_img, rows, c["32"], cols, const("c34", [2 * half], i64)], axis=0)
    by_freq = op("Transpose", [op("Reshape", [rfft, grid5])], perm=[0, 1, 3, 4, 2])  # (N, rows, cols, 34, 32 y)
    by_freq = op("Reshape", [by_freq, const("nx34x32", [0, -1, 2 * half, PATCH], i64)])  # (N, n, 34, 32 y)
    mixed = op("MatMul", [by_freq, const("stage2", stage2)])  # (N, n, 34, 64): [. cos | . -sin] along y
    re_rows, im_rows = op("Split", [mixed, const("halves", [half, half], i64)], n_out=2, axis=-2)
    by_half = const("quarters", [PATCH, PATCH], i64)
    re_cos, re_sin = op("Split", [re_rows, by_half], n_out=2, axis=-1)
    im_cos, im_sin = op("Split", [im_rows, by_half], n_out=2, axis=-1)
    re = op("Sub", [re_cos, im_sin])  # Re F = a cos + b sin
    im = op("Add", [im_cos, re_sin])  # Im F = b cos - a sin
    power = op("Add", [op("Mul", [re, re]), op("Mul", [im, im])])  # (N, n, 17 kx, 32 ky)
    weight_c = const("colweight", weight)  # rfft frequencies 1..15 stand for two (conjugate symmetry)
    ax_last = const("ax_last", [-1], i64)
    total = op("MatMul", [op("ReduceSum", [power, ax_last], keepdims=0), weight_c])  # (N, n)
    total = op("Unsqueeze", [op("Add", [total, const("eps", np.float32(EPS))]), const("ax23", [-1, -2], i64)])
    prob = op("Div", [power, total])
    plogp = op("Mul", [prob, op("Log", [op("Add", [prob, const("eps2", np.float32(EPS))])])])
    per_kx = op("ReduceSum", [plogp, ax_last], keepdims=0)
    entropy = op("Mul", [op("MatMul", [per_kx, weight_c]), const("neg_inv_ln2", np.float32(-1 / math.log(2)))])

    # Step 5: 24 lowest + 25 highest by (rounded entropy, raster index).
    key = op("Round", [op("Mul", [entropy, const("rank_scale", np.float32(2.0 ** rank_bits))])])  # (N, n)
    _, low = op("TopK", [key, const("k_low", [N_LOW], i64)], n_out=2, axis=-1, largest=0, sorted=1)
    n_patches = op("Mul", [rows, cols])
    last = op("Sub", [n_patches, c["1"]])
    # Reversed by a negative-step Slice (onnxruntime 1.32's optimiser mis-sizes Gather(Range(n-1, -1, -1))).
    reverse = op("Slice", [key, c["m1"], const("int64_min", [np.iinfo(np.int64).min], i64), c["1"], c["m1"]])
    _, high_rev = op("TopK", [reverse, const("k_high", [N_HIGH], i64)], n_out=2, axis=-1, largest=1, sorted=1)
    high = op("Sub", [last, high_rev])

    def ascending(idx, k):  # TopK sorts; through float32, exact for indices below 2^24
        values, _ = op("TopK", [op("Cast", [idx], to=TensorProto.FLOAT), k], n_out=2, axis=-1, largest=0,
                       sorted=1)
        return op("Cast", [values], to=TensorProto.INT64)

    # patch_indices: low then high, each ascending (a client tells them apart); the tile: all 49 ascending
    low_high = op("Concat", [ascending(low, const("k_low2", [N_LOW], i64)),
                             ascending(high, const("k_high2", [N_HIGH], i64))], axis=-1)
    indices = ascending(low_high, c["49"])  # (N, 49) raster order

    # Step 6: gather the 49 patches' pixels from the unpadded image and tile them 7x7.
    offsets = const("offsets", np.arange(PATCH), i64)
    unsq = lambda t, axes: op("Unsqueeze", [t, const(f"unsq{count[0]}", axes, i64)])  # noqa: E731
    top = op("Add", [unsq(op("Mul", [op("Div", [indices, cols]), c["32"]]), [-1]), offsets])  # (N, 49, 32)
    left = op("Add", [unsq(op("Mul", [op("Mod", [indices, cols]), c["32"]]), [-1]), offsets])
    src_row = op("Gather", [rows_src, top], axis=0)
    src_col = op("Gather", [cols_src, left], axis=0)
    image_offset = op("Mul", [op("Range", [scalar["0"], op("Squeeze", [n_img, c["0"]]), scalar["1"]]),
                              op("Mul", [height, width])])  # (N,)
    flat = op("Add", [op("Add", [op("Mul", [unsq(src_row, [-1]), width]), unsq(src_col, [-2])]),
                      unsq(image_offset, [1, 2, 3])])  # (N, 49, 32, 32)
    picked = op("Gather", [op("Reshape", [pixels, const("px", [-1, 3], i64)]), flat], axis=0)  # (N,49,32,32,3)
    tiles = op("Reshape", [picked, const("grid6", [-1, GRID, GRID, PATCH, PATCH, 3], i64)])
    tiles = op("Transpose", [tiles], perm=[0, 1, 3, 2, 4, 5])
    tiles = op("Reshape", [tiles, const("tile", [-1, TILE, TILE, 3], i64)])
    chw = op("Transpose", [tiles], perm=[0, 3, 1, 2])
    # dgsnet.image.preprocess.normalize's arithmetic, constants rounded to float32 the same way.
    std = np.asarray(norm["std"], np.float64)
    scale = (1.0 / (255.0 * std)).astype(np.float32).reshape(1, 3, 1, 1)
    bias = (-np.asarray(norm["mean"], np.float64) / std).astype(np.float32).reshape(1, 3, 1, 1)
    nodes.append(helper.make_node("Add", [op("Mul", [chw, const("scale", scale)]), const("bias", bias)],
                                  [_P + "tiles"], name=_P + "normalise"))
    if batched:  # one [rows, cols] per image (Triton batches every output)
        grid = op("Unsqueeze", [op("Concat", [rows, cols], axis=0), c["0"]])
        nodes.append(helper.make_node("Tile", [grid, op("Concat", [n_img, c["1"]], axis=0)], ["patch_grid"],
                                      name=_P + "grid_out"))
    else:
        nodes.append(helper.make_node("Concat", [rows, cols], ["patch_grid"], axis=0, name=_P + "grid_out"))
    if batched:
        nodes.append(helper.make_node("Identity", [low_high], ["patch_indices"], name=_P + "indices_out"))
        in_shape, idx_shape = ["batch", "height", "width", 3], ["batch", N_SELECT]
    else:
        nodes.append(helper.make_node("Squeeze", [low_high, c["0"]], ["patch_indices"], name=_P + "indices_out"))
        in_shape, idx_shape = ["height", "width", 3], [N_SELECT]
    graph = helper.make_graph(
        nodes, "dgsnet_patch_selection",
        [helper.make_tensor_value_info(input_name, TensorProto.UINT8, in_shape)],
        [helper.make_tensor_value_info(_P + "tiles", TensorProto.FLOAT, [None, 3, TILE, TILE]),
         helper.make_tensor_value_info("patch_indices", TensorProto.INT64, idx_shape),
         helper.make_tensor_value_info("patch_grid", TensorProto.INT64, ["batch", 2] if batched else [2])],
        initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def join_encoder(pre, encoder, *, batched: bool):
    """One model: preprocessing -> the encoder export (its input renamed); outputs logits,
    probabilities, patch_indices, patch_grid. The encoder's own names get an 'encoder/' prefix."""
    import onnx
    from onnx import compose

    encoder = compose.add_prefix(encoder, "encoder/", rename_outputs=False)
    pre.ir_version = encoder.ir_version
    model = compose.merge_models(pre, encoder, io_map=[(_P + "tiles", "encoder/" + ENCODER_INPUT)])
    order = ["logits", "probabilities", *EXTRA_OUTPUTS]
    outputs = {o.name: o for o in model.graph.output}
    del model.graph.output[:]
    model.graph.output.extend(outputs[name] for name in order)
    if not batched:  # one image: logits (1,), probabilities (1,)
        for name in ("logits", "probabilities"):
            dims = model.graph.output[order.index(name)].type.tensor_type.shape.dim
            dims[0].Clear()
            dims[0].dim_value = 1
    onnx.checker.check_model(model)
    return model


# ------------------------------------------------------------ verification

def verification_corpus(seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Images the end-to-end graph is checked on: photos (scikit-image's samples, when installed) at
    several sizes (tiny, odd, ~4000 px, greyscale) and generated-style images (gradients,
    checkerboards, noise, flat), as (name, HxWx3 uint8)."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, np.ndarray]] = []
    try:
        import skimage.data as samples
    except ImportError:  # a [train]-only install: the generated images still cover every code path
        samples = None
    if samples is not None:
        from PIL import Image

        photos = {name: np.asarray(getattr(samples, name)()) for name in
                  ("astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field")}
        photos["camera"] = np.repeat(photos["camera"][..., None], 3, axis=2)  # greyscale, expanded
        for name, image in photos.items():
            out.append((f"{name} {image.shape[1]}x{image.shape[0]}", image))
        for i, (name, image) in enumerate(photos.items()):
            for h, w in ((17, 23), (100, 57), (257, 311), (31, 300))[i % 2::2]:
                top, left = rng.integers(0, image.shape[0] - h), rng.integers(0, image.shape[1] - w)
                out.append((f"{name} crop {w}x{h}", np.ascontiguousarray(image[top:top + h, left:left + w])))
        big = np.asarray(Image.fromarray(photos["coffee"]).resize((4000, 2667), Image.BICUBIC))
        out.append(("coffee 4000x2667 (bicubic)", big))
    yy, xx = np.mgrid[0:300, 0:400].astype(np.float64)
    out.append(("gradient 400x300", np.stack([xx / 400 * 255, yy / 300 * 255, (xx + yy) / 700 * 255], -1)
                .astype(np.uint8)))
    yy, xx = np.mgrid[0:257, 0:311].astype(np.float64)
    out.append(("radial gradient 311x257", np.repeat((np.hypot(yy - 128, xx - 155) / 200 * 255)
                                                      .clip(0, 255).astype(np.uint8)[..., None], 3, 2)))
    for period, (h, w) in ((8, (256, 256)), (3, (222, 333)), (16, (90, 160))):
        board = (((np.arange(h)[:, None] // period) + (np.arange(w)[None] // period)) % 2 * 255).astype(np.uint8)
        out.append((f"checkerboard {period} px {w}x{h}", np.repeat(board[..., None], 3, 2)))
    out.append(("uniform noise 300x300", rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)))
    out.append(("uniform noise 50x40 (mirror-padded)", rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)))
    out.append(("uniform noise 130x200 (mirror-padded)", rng.integers(0, 256, (200, 130, 3), dtype=np.uint8)))
    noisy = np.stack([xx / 311 * 200, yy / 257 * 200, np.full_like(xx, 90.0)], -1) + rng.normal(0, 4, (257, 311, 3))
    out.append(("noisy gradient 311x257", noisy.clip(0, 255).astype(np.uint8)))
    out.append(("flat grey 64x64", np.full((64, 64, 3), 128, np.uint8)))
    out.append(("one pixel", np.full((1, 1, 3), 200, np.uint8)))
    return out


def _session(model_or_path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def numpy_reference(image: np.ndarray, encoder, norm: dict) -> tuple[np.ndarray, float]:
    """The specification: dgsnet.image.preprocess's selection (raster indices) and the encoder's
    probability of its normalised tile (`encoder`: an onnxruntime session of the encoder export)."""
    from dgsnet.image import preprocess as spec

    prepared = spec.prepare_image(image)
    keep = spec._select_prepared(prepared)
    tile = spec.normalize(spec.tile_patches(spec.gather_patches(prepared, keep)), norm["mean"], norm["std"])
    (prob,) = encoder.run(["probabilities"], {ENCODER_INPUT: tile[None]})
    return keep, float(prob[0])


def numpy_low_high(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """numpy's 24 low- and 25 high-entropy raster indices, each ascending (the patch_indices output)."""
    from dgsnet.image import preprocess as spec

    prepared = spec.prepare_image(image)
    keep = spec._select_prepared(prepared)
    exact = np.round(spec._exact_entropies(prepared, keep), spec.RANK_DECIMALS)
    order = keep[np.lexsort((keep, exact))]  # by (entropy, index), as the definition ranks
    return np.sort(order[:N_LOW]), np.sort(order[N_LOW:])


def _tie_gap(image: np.ndarray, got: np.ndarray, want: np.ndarray) -> float:
    """Largest difference of exact (float64) entropy between the patches the two selections swap."""
    from dgsnet.image import preprocess as spec

    prepared = spec.prepare_image(image)
    extra, missing = np.setdiff1d(got, want), np.setdiff1d(want, got)
    if extra.size != missing.size:
        return float("inf")
    if extra.size == 0:
        return 0.0
    exact = lambda idx: np.sort(spec.spectral_entropy(spec.gather_patches(prepared, idx)))  # noqa: E731
    return float(np.max(np.abs(exact(extra) - exact(missing))))


def verify_end_to_end(model, encoder_path, norm: dict, *, batched: bool, corpus=None) -> dict:
    """The end-to-end graph against numpy selection + the encoder export on `corpus`: the same 49
    patches and probabilities within PROB_TOL, except where float32 entropies order a near-tie
    (exact entropies within TIE_TOL) differently: those are counted, probabilities within TIE_PROB_TOL.
    Raises ExportVerificationError on anything else. The batched variant runs images of one size together."""
    import time

    from .spec import ExportVerificationError

    start = time.perf_counter()
    corpus = verification_corpus() if corpus is None else list(corpus)
    if not corpus:
        raise ValueError("verify_end_to_end: an empty corpus verifies nothing; pass None for the default one")
    session, encoder = _session(model), _session(encoder_path)
    input_name = BATCH_INPUT if batched else SINGLE_INPUT
    results: dict[int, tuple] = {}
    groups: dict[tuple, list[int]] = {}
    for i, (_, image) in enumerate(corpus):
        groups.setdefault(image.shape if batched else (i,), []).append(i)
    for members in groups.values():
        feed = np.stack([corpus[i][1] for i in members]) if batched else corpus[members[0]][1]
        _, probs, indices, grid = session.run(["logits", "probabilities", *EXTRA_OUTPUTS], {input_name: feed})
        indices = indices.reshape(len(members), N_SELECT)
        for j, i in enumerate(members):
            results[i] = (indices[j], float(probs.reshape(-1)[j]), grid.reshape(-1, 2)[j if batched else 0])
    report = {"images": len(corpus), "identical": 0, "ties": [], "max_prob_error": 0.0,
              "max_prob_error_ties": 0.0, "largest": "", "batched": batched}
    largest = max(corpus, key=lambda item: item[1].shape[0] * item[1].shape[1])
    report["largest"] = f"{largest[1].shape[1]}x{largest[1].shape[0]}"
    for i, (name, image) in enumerate(corpus):
        split, prob, grid = results[i]
        got = np.sort(split)
        want, want_prob = numpy_reference(image, encoder, norm)
        error = abs(prob - want_prob)
        from dgsnet.image.preprocess import prepare_image

        rows, cols = (s // PATCH for s in prepare_image(image).shape[:2])
        if [int(v) for v in grid] != [rows, cols]:
            raise ExportVerificationError(f"{name}: patch_grid {grid.tolist()}, numpy's grid is {[rows, cols]}")
        low, high = numpy_low_high(image)
        same_set = np.array_equal(got, want)
        if same_set and np.array_equal(split[:N_LOW], low) and np.array_equal(split[N_LOW:], high):
            report["identical"] += 1
            report["max_prob_error"] = max(report["max_prob_error"], error)
            if error > PROB_TOL:
                raise ExportVerificationError(f"{name}: same patches as numpy, but probability {prob:.6f} vs "
                                              f"{want_prob:.6f} (> {PROB_TOL:g})")
            continue
        # A tie moves a patch across a boundary: in or out of the selection, or between its low and
        # high halves (an image of exactly 49 patches keeps them all: only the split can differ).
        gap = max(_tie_gap(image, split[:N_LOW], low), _tie_gap(image, split[N_LOW:], high))
        allowed = PROB_TOL if same_set else TIE_PROB_TOL
        if gap > TIE_TOL or error > allowed:
            raise ExportVerificationError(
                f"{name}: the graph's 24 low / 25 high patches {split.tolist()} differ from numpy's "
                f"{low.tolist()} / {high.tolist()}: exact entropies {gap:.3g} bits apart (a float32 tie is "
                f"<= {TIE_TOL:g}), probability {prob:.6f} vs {want_prob:.6f} (allowed {allowed:g})")
        report["ties"].append({"image": name, "entropy_gap_bits": gap, "prob_error": error})
        report["max_prob_error_ties"] = max(report["max_prob_error_ties"], error)
    report["seconds"] = time.perf_counter() - start
    return report


# ------------------------------------------------------------------ export

KIND = "end-to-end"  # metadata "kind" of these files; the runtime reads the steps, this names them


def end_to_end_metadata(props: dict, *, batched: bool) -> dict:
    """The encoder export's metadata_props, restated for the joined graph: raw image input, both
    preprocessing steps in the graph, the extra outputs."""
    import json

    from ..runtime.metadata import NORMALIZE, PATCH_SELECTION

    shape = ["batch", "height", "width", 3] if batched else ["height", "width", 3]
    return {**props, "kind": KIND, "rank_bits": str(RANK_BITS),
            "input": json.dumps({"name": BATCH_INPUT if batched else SINGLE_INPUT, "dtype": "uint8",
                                 "layout": "NHWC" if batched else "HWC", "shape": shape}),
            "preprocessing": json.dumps({"caller": [], "in_graph": [PATCH_SELECTION, NORMALIZE]}),
            "outputs": json.dumps(["logits", "probabilities", *EXTRA_OUTPUTS])}


def export_end_to_end(detector, out_path, *, metadata: dict, batched: bool = False, corpus=None,
                      tensorrt_check: str = "error", **encoder_kwargs):
    """Exports `detector` as one end-to-end ONNX file (raw uint8 image(s) in; see the module doc).

    The encoder is exported and verified against torch first (export_detector, `encoder_kwargs`:
    opset, fp16, exporter, atol, batch_sizes); the joined graph is then checked against TensorRT's
    op list and verified against the numpy path on `corpus` (verification_corpus() by default).
    Nothing is written to `out_path` unless every check passes. Returns the encoder's ExportReport
    with the joined file's path, size, ops and metadata, and `end_to_end` (the corpus counts).
    """
    import json
    import tempfile
    import time
    from collections import Counter
    from pathlib import Path

    import onnx

    from .build import _save_onnx, export_detector
    from .spec import ExportError, normalization_spec
    from .tensorrt import tensorrt_issues

    start = time.perf_counter()
    out_path = Path(out_path)
    norm = normalization_spec(metadata.get("normalization", "imagenet"))
    with tempfile.TemporaryDirectory(prefix=".tmp-dgsnet-e2e-",
                                     dir=out_path.parent if out_path.parent.exists() else None) as tmp:
        encoder_path = Path(tmp) / "encoder.onnx"
        report = export_detector(detector, encoder_path, metadata=metadata, tensorrt_check=tensorrt_check,
                                 **encoder_kwargs)
        encoder = onnx.load(str(encoder_path))
        pre = preprocessing_graph(norm, batched=batched, opset=report.opset)
        model = join_encoder(pre, encoder, batched=batched)
        issues = tensorrt_issues(model)
        if issues and tensorrt_check == "error":
            raise ExportError(f"{out_path}: not TensorRT-ready: {'; '.join(issues)}")
        warnings_out = list(report.warnings) + [f"TensorRT: {i}" for i in issues if tensorrt_check == "warn"]
        warnings_out.append("uint8 graph input of dynamic height and width: TensorRT needs 10.x and an "
                            "optimisation profile over image sizes")
        props = end_to_end_metadata(report.metadata, batched=batched)
        del model.metadata_props[:]
        onnx.helper.set_model_props(model, props)
        model.doc_string = (f"dgsnet end-to-end detector ({props['backbone']}): raw RGB uint8 -> logits, "
                            "probabilities, patch_indices, patch_grid; see metadata_props")
        checked = verify_end_to_end(model, encoder_path, norm, batched=batched, corpus=corpus)
    props["verification_end_to_end"] = json.dumps(checked)
    onnx.helper.set_model_props(model, props)
    _save_onnx(model, out_path)
    summary = dataclasses.replace(
        report, path=str(out_path), input_name=BATCH_INPUT if batched else SINGLE_INPUT, input_dtype="uint8",
        op_types=dict(Counter(n.op_type for n in model.graph.node).most_common()), metadata=props,
        file_bytes=out_path.stat().st_size, seconds=time.perf_counter() - start, warnings=warnings_out)
    return EndToEndReport(**dataclasses.asdict(summary), end_to_end=checked)


@dataclasses.dataclass
class EndToEndReport(ExportReport):
    """export_detector's report for the joined file, plus the corpus verification's counts."""
    end_to_end: dict = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        e = self.end_to_end
        return (super().summary() + f"\nend-to-end ({'batched' if e['batched'] else 'one image'}): "
                f"{e['identical']}/{e['images']} corpus images select numpy's patches "
                f"(probability within {e['max_prob_error']:.2g}), {len(e['ties'])} float32 ties "
                f"(probability within {e['max_prob_error_ties']:.2g}); largest {e['largest']}; "
                f"checked in {e['seconds']:.1f} s")


def export_end_to_end_checkpoint(run_dir, out_path, *, head: str = "auto", threshold: float = 0.5,
                                 pretrained: str | None = None, **kwargs):
    """export_checkpoint's end-to-end counterpart: a finished run directory -> one end-to-end file."""
    from dgsnet.predict import load_detector

    from .spec import checkpoint_metadata

    detector, meta, head = load_detector(str(run_dir), head, pretrained=pretrained)
    return export_end_to_end(detector, out_path, metadata=checkpoint_metadata(meta, run_dir, head, threshold),
                             **kwargs)
