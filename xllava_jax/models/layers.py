"""Building blocks shared by the vision and language towers: dense layers with logical
axes, attention masks and attention, remat policies, and the scanned layer stack."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from xllava_jax.models import cpu_kernels

INIT_STD = 0.02
LAYER_AXIS = "layers"

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash")
REMAT_POLICIES = {
    "none": None,  # no rematerialisation: keep every activation
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole layer
    "dots": jax.checkpoint_policies.dots_saveable,  # keep matmul outputs
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep weight matmuls
}


@dataclasses.dataclass(frozen=True)
class ExecConfig:
    """How a tower runs (not what it computes): dtypes, attention kernel, scan and remat."""

    dtype: str = "float32"  # compute dtype of activations and matmuls
    param_dtype: str = "float32"  # storage dtype of parameters
    attention: str = "xla"  # auto | xla | cudnn | splash (see `attend`)
    scan_layers: bool = True  # nn.scan over layers (False: same params, fully unrolled loop)
    remat_policy: str = "none"  # one of REMAT_POLICIES or a jax.checkpoint_policies name
    # inference only (no gradients): on CPU with bf16 params, products of few rows (decode) read each layer's
    # weights in place through the bf16 matrix-vector kernel (models/cpu_kernels.py) instead of XLA's dot, and
    # on CPUs with AVX512-BF16 so do those of many rows (prefill), and bf16 attention's per-head products
    cpu_matvec: bool = False

    def validate(self) -> None:
        """Raise ValueError naming any unsupported setting."""
        for field in ("dtype", "param_dtype"):
            if getattr(self, field) not in DTYPES:
                raise ValueError(f"{field}={getattr(self, field)!r}; expected one of {sorted(DTYPES)}")
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention={self.attention!r}; expected one of {ATTENTION_IMPLEMENTATIONS}")
        remat_policy(self.remat_policy)

    @property
    def jnp_dtype(self) -> Any:
        return DTYPES[self.dtype]

    @property
    def jnp_param_dtype(self) -> Any:
        return DTYPES[self.param_dtype]


def remat_policy(name: str) -> Callable | None:
    """The jax.checkpoint policy called `name` (None for no remat)."""
    if name in REMAT_POLICIES:
        return REMAT_POLICIES[name]
    policy = getattr(jax.checkpoint_policies, name, None)
    if policy is None:
        raise ValueError(f"remat_policy={name!r}; expected one of {sorted(REMAT_POLICIES)} "
                         "or a jax.checkpoint_policies name")
    return policy


@flax.struct.dataclass
class LayerRef:
    """Layer `index` of stacked weights [L, ...], not sliced: what a Dense kernel is in the CPU matvec loop."""

    stacked: jax.Array
    index: jax.Array

    def value(self) -> jax.Array:
        """The layer's weights, sliced behind a barrier (see pick_layer)."""
        stacked, index = jax.lax.optimization_barrier((self.stacked, self.index))
        return jax.lax.dynamic_index_in_dim(stacked, index, keepdims=False)


class Dense(nn.Module):
    """nn.Dense (kernel [in, out], optional bias) whose kernel may be a LayerRef or a cpu_kernels.MappedKernel (its
    products always in place); with `cpu_matvec`, products with a bf16 kernel go through the CPU kernels where they
    apply (cpu_kernels.product; same result dtype as `dot_general`)."""

    features: int
    use_bias: bool
    dtype: Any
    param_dtype: Any
    kernel_init: Callable
    bias_init: Callable
    dot_general: Callable | None = None
    cpu_matvec: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.get_variable("params", "kernel")
        if not isinstance(kernel, (LayerRef, cpu_kernels.MappedKernel)):
            kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x = x.astype(self.dtype)
        dot_general = self.dot_general or jax.lax.dot_general
        dims = (((x.ndim - 1,), (0,)), ((), ()))
        mapped = isinstance(kernel, cpu_kernels.MappedKernel)
        weights = kernel.stacked if isinstance(kernel, LayerRef) else kernel
        shape = kernel.kernel_shape if mapped else weights.shape[-2:]
        out = jax.eval_shape(lambda a: dot_general(a, jnp.zeros(shape, self.dtype), dims), x)
        kernel_product = (cpu_kernels.product(math.prod(x.shape[:-1]), weights, x.dtype)
                          if self.cpu_matvec and not mapped else None)
        if mapped:
            y = kernel.product(x)
        elif kernel_product is not None:
            y = kernel_product(x, weights, kernel.index if isinstance(kernel, LayerRef) else 0)
        else:
            kernel = (kernel.value() if isinstance(kernel, LayerRef) else kernel).astype(self.dtype)
            # XLA:CPU runs a 16-bit-output dot at half the speed of the same dot accumulated and returned in
            # float32 (168 vs 322 GFLOP/s at 617 x 4096 x 11008); both round once, to the same values
            wide = (self.dot_general is None and jnp.dtype(self.dtype).itemsize == 2
                    and widens_16bit_slices(target_platform()))
            y = dot_general(x, kernel, dims, **({"preferred_element_type": jnp.float32} if wide else {}))
        y = y.astype(out.dtype)
        if bias is not None:
            y = y + bias.astype(self.dtype)
        return y


def dense(features: int, axes: tuple[str, str], cfg: ExecConfig, *, use_bias: bool, name: str,
          dot_general: Callable | None = None, kernel_init: Callable | None = None,
          bias_init: Callable | None = None) -> Dense:
    """A Dense layer whose kernel [in, out] and bias carry logical axis names (defaults: N(0, INIT_STD^2) kernel,
    zero bias, lax.dot_general)."""
    return Dense(
        features,
        use_bias=use_bias,
        dtype=cfg.jnp_dtype,
        param_dtype=cfg.jnp_param_dtype,
        kernel_init=nn.with_logical_partitioning(kernel_init or nn.initializers.normal(INIT_STD), axes),
        bias_init=nn.with_logical_partitioning(bias_init or nn.initializers.zeros_init(), axes[-1:]),
        dot_general=dot_general,
        cpu_matvec=cfg.cpu_matvec,
        name=name,
    )


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Constrain an activation's sharding by logical axis names (no-op without a mesh)."""
    return nn.with_logical_constraint(x, tuple(axes))


def make_attention_mask(
    num_queries: int,
    key_mask: jax.Array | None = None,
    *,
    num_keys: int | None = None,
    segment_ids: jax.Array | None = None,
    query_offset: jax.Array | int = 0,
    causal: bool = True,
) -> jax.Array | None:
    """Boolean [B|1, 1, T, S] mask: causal over absolute slots, key padding, and packed segments.

    Query i sits at key slot `query_offset + i` (the KV-cache write index when decoding).
    `key_mask` [B, S] marks real keys; `segment_ids` [B, T] (T == S, no cache) keeps
    attention inside each packed sample, 0 being padding.
    """
    num_keys = num_keys if num_keys is not None else (key_mask.shape[-1] if key_mask is not None else num_queries)
    mask = None
    if causal:
        q_slot = query_offset + jnp.arange(num_queries)[:, None]
        mask = (jnp.arange(num_keys)[None, :] <= q_slot)[None, None]
    if key_mask is not None:
        keys = key_mask.astype(bool)[:, None, None, :]
        mask = keys if mask is None else mask & keys
    if segment_ids is not None:
        same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] != 0)
        mask = same[:, None] if mask is None else mask & same[:, None]
    return mask


SPLASH_BLOCK_MULTIPLE = 128  # splash attention blocks are multiples of the TPU lane width


@flax.struct.dataclass
class MaskSpec:
    """What `make_attention_mask` takes, kept apart so each attention kernel can use its own mask form."""

    key_mask: jax.Array | None  # [B, S] 1 = real key
    segment_ids: jax.Array | None  # [B, T] packed sample ids (0 = padding), T == S
    query_offset: Any = 0  # key slot of query 0 (the KV-cache write index)
    num_keys: int = flax.struct.field(pytree_node=False, default=0)  # S
    causal: bool = flax.struct.field(pytree_node=False, default=True)
    cached: bool = flax.struct.field(pytree_node=False, default=False)  # keys come from a KV cache

    def dense(self, num_queries: int) -> jax.Array | None:
        """The boolean [B|1, 1, T, S] mask."""
        return make_attention_mask(num_queries, self.key_mask, num_keys=self.num_keys or None,
                                   segment_ids=self.segment_ids, query_offset=self.query_offset, causal=self.causal)

    def no_cache(self, num_queries: int) -> bool:
        """Keys are the queries themselves (training, prefill without a cache): the case fused kernels take."""
        return self.causal and not self.cached and (self.num_keys or num_queries) == num_queries


def resolve_attention(name: str, platform: str | None = None, dtype: str = "bfloat16") -> str:
    """'auto' -> splash on TPU, cudnn on an NVIDIA GPU (16-bit compute), xla elsewhere; other names unchanged."""
    if name != "auto":
        return name
    platform = platform or jax.default_backend()
    if platform == "tpu":
        return "splash"
    if platform in ("gpu", "cuda") and dtype != "float32":
        return "cudnn"
    return "xla"


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: MaskSpec | jax.Array | None, implementation: str,
           dtype: str = "bfloat16", kernels: bool = False) -> jax.Array:
    """Scaled dot-product attention, [B, T, N, D] x [B, S, K, D] -> [B, T, N, D] (GQA when K < N).

    `mask`: a MaskSpec, a dense boolean mask, or None (no mask). Kernels, for a MaskSpec without a cache:
    xla   jax.nn.dot_product_attention on the dense [B, 1, T, S] mask;
    cudnn cuDNN's causal mask type and per-row sequence lengths (rows are right-padded); packed segment ids
          still go as a dense mask;
    splash the Pallas TPU splash-attention kernel under shard_map (batch and heads sharded as the activations
          are), causal mask + segment ids (padding = segment 0), GQA; Pallas interpret mode off TPU.
    auto  resolve_attention for the current backend. With a KV cache, or for splash a length that is no
    multiple of SPLASH_BLOCK_MULTIPLE (the kernel's lane width), the dense mask and xla are used. Query rows
    that are padding (attention_mask 0) may differ between kernels; no loss reads them. `kernels` (inference
    only: no gradients) lets xla on CPU take bf16 per-head products of many query rows to the bf16 GEMM.
    """
    implementation = resolve_attention(implementation, dtype=dtype)
    spec = mask if isinstance(mask, MaskSpec) else None
    t = q.shape[1]
    if spec is not None and spec.no_cache(t):
        if implementation == "splash" and t % SPLASH_BLOCK_MULTIPLE == 0:
            return splash_attention(q, k, v, spec)
        if implementation == "cudnn" and spec.segment_ids is None:
            return jax.nn.dot_product_attention(q, k, v, **cudnn_mask_args(spec, q.shape[0], t),
                                                implementation="cudnn")
    dense_mask = spec.dense(t) if spec is not None else mask
    if implementation == "splash":
        implementation = "xla"
    if implementation == "xla" and jax.default_backend() == "cpu":  # same math, faster on CPU
        from xllava_jax.models.attention_cpu import cpu_attention
        return cpu_attention(q, k, v, dense_mask, kernels)
    return jax.nn.dot_product_attention(q, k, v, mask=dense_mask, implementation=implementation)


def cudnn_mask_args(spec: MaskSpec, batch: int, length: int) -> dict:
    """A causal, right-padded MaskSpec as cuDNN's mask type and sequence lengths (no dense bias)."""
    lengths = (jnp.sum(spec.key_mask.astype(jnp.int32), axis=-1) if spec.key_mask is not None
               else jnp.full((batch,), length, jnp.int32))
    return {"is_causal": True, "query_seq_lengths": lengths, "key_value_seq_lengths": lengths}


def splash_segments(spec: MaskSpec, batch: int, length: int) -> jax.Array:
    """Splash segment ids [B, T]: packed ids, or 1 for real and 0 for padding keys (queries alike)."""
    seg = jnp.ones((batch, length), jnp.int32)
    if spec.segment_ids is not None:
        seg = spec.segment_ids.astype(jnp.int32)
    if spec.key_mask is not None:
        seg = jnp.where(spec.key_mask.astype(bool), seg, 0)
    return seg


def _splash_kernel(num_heads: int, length: int, interpret: bool) -> Callable:
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
    block = min(512, length)
    sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                          block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    mask = sm.MultiHeadMask([sm.CausalMask((length, length)) for _ in range(num_heads)])
    return sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def _mesh_axes(logical: tuple[str, ...]) -> tuple:
    """Mesh axes of logical activation axes under the active rules."""
    return tuple(nn.logical_to_mesh_axes(logical))


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, spec: MaskSpec) -> jax.Array:
    """Causal splash attention with segment ids, [B, T, N, D] -> [B, T, N, D], under shard_map on the active mesh."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    b, t, n, d = q.shape
    segments = splash_segments(spec, b, t)
    mesh = jax.sharding.get_abstract_mesh()
    interpret = target_platform() != "tpu"

    def local(q, k, v, seg):
        kernel = _splash_kernel(q.shape[2], t, interpret)
        qt = jnp.swapaxes(q * (1.0 / d ** 0.5), 1, 2).astype(q.dtype)
        out = jax.vmap(kernel)(qt, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), segment_ids=sk.SegmentIds(seg, seg))
        return jnp.swapaxes(out, 1, 2).astype(q.dtype)

    if mesh.empty:
        return local(q, k, v, segments)
    batch, _, heads, _ = _mesh_axes(("activation_batch", "activation_length", "q_heads", None))
    kv_heads = _mesh_axes(("kv_heads",))[0]
    size = lambda axes: 1 if axes is None else math.prod(  # noqa: E731
        mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
    if b % size(batch):
        batch = None
    if n % size(heads) or k.shape[2] % size(kv_heads) or heads != kv_heads:
        heads = kv_heads = None
    P = jax.sharding.PartitionSpec
    qs, ks = P(batch, None, heads, None), P(batch, None, kv_heads, None)
    return jax.shard_map(local, mesh=mesh, in_specs=(qs, ks, ks, P(batch, None)), out_specs=qs,
                         check_vma=False)(q, k, v, segments)


def target_platform() -> str:
    """The platform being compiled for: the active mesh's devices, else the default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = getattr(mesh, "abstract_device", None) if not mesh.empty else None
    return device.platform if device is not None else jax.default_backend()


def widens_16bit_slices(platform: str) -> bool:
    """Whether XLA on `platform` computes a 16-bit float dynamic-slice in float32 by converting its whole operand
    (XLA:CPU has no 16-bit float arithmetic). In a loop over stacked weights that conversion is loop-invariant
    and gets hoisted: a float32 copy of every layer's weights as a temporary."""
    return platform == "cpu"


@jax.custom_vjp
def pick_layer(stacked: Any, shadow: Any, index: jax.Array) -> Any:
    """Layer `index` of the stacked params, sliced behind an optimization barrier so no conversion of the whole
    stack can be hoisted out of the loop; `shadow` (the same layer as a scan input) takes the gradient."""
    stacked, index = jax.lax.optimization_barrier((stacked, index))
    return jax.tree.map(lambda w: jax.lax.dynamic_index_in_dim(w, index, keepdims=False), stacked)


def _pick_layer_fwd(stacked, shadow, index):
    return pick_layer(stacked, shadow, index), None


def _pick_layer_bwd(_, ct):
    return None, ct, None


pick_layer.defvjp(_pick_layer_fwd, _pick_layer_bwd)


def layer_refs(stacked: Any, index: jax.Array) -> Any:
    """Layer `index` of the stacked params for the CPU matvec loop: bf16 matrices stay stacked (LayerRef), the
    rest (norm scales, biases: small) are sliced. No gradient reaches the LayerRefs: inference only."""
    def pick(w):
        if w.ndim == 3 and w.dtype == jnp.bfloat16:
            return LayerRef(w, index)
        return jax.lax.dynamic_index_in_dim(w, index, keepdims=False)
    return jax.tree.map(pick, stacked)


def _has_16bit_float(tree: Any) -> bool:
    return any(jnp.issubdtype(x.dtype, jnp.floating) and jnp.dtype(x.dtype).itemsize == 2
               for x in jax.tree.leaves(tree))


def scanned_layers(layer: type[nn.Module], cfg: ExecConfig, num_layers: int, broadcast_args: int) -> type:
    """nn.scan of `layer` (rematerialised per cfg.remat_policy) with params stacked on a leading 'layers' axis."""
    policy = remat_policy(cfg.remat_policy)
    if policy is not None:
        layer = nn.remat(layer, policy=policy, prevent_cse=not cfg.scan_layers)
    return nn.scan(
        layer,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(0,) + (nn.broadcast,) * broadcast_args,
        length=num_layers,
        unroll=1 if cfg.scan_layers else num_layers,
        metadata_params={nn.PARTITION_NAME: LAYER_AXIS},
    )


class LayerStack(nn.Module):
    """`layer` repeated `num_layers` times with params stacked on a leading 'layers' axis.

    Called as stack(carry, per_layer_input, *broadcast) -> (carry, stacked per-layer outputs); the layer is
    layer(cfg) called as layer(carry, per_layer_input, *broadcast) -> (carry, per_layer_output). With
    cfg.scan_layers False the loop is fully unrolled (same parameter layout, so checkpoints work either way).
    Where the compiler widens 16-bit slices (`widens_16bit_slices`) and some param is 16-bit, the loop reads
    each layer through `pick_layer`; elsewhere it is nn.scan's own slicing.
    """

    layer: type[nn.Module]
    cfg: ExecConfig
    num_layers: int
    broadcast_args: int

    def setup(self):
        self.stack = scanned_layers(self.layer, self.cfg, self.num_layers, self.broadcast_args)(self.cfg)
        nn.share_scope(self, self.stack)

    def __call__(self, carry: Any, xs: Any, *shared: Any) -> tuple[Any, Any]:
        params = self.variables.get("params", {}) if not self.is_initializing() else {}
        if not params or not (widens_16bit_slices(target_platform()) and _has_16bit_float(params)):
            return self.stack(carry, xs, *shared)
        return self.picked_loop(nn.unbox(params), carry, xs, shared)

    def picked_loop(self, params: Any, carry: Any, xs: Any, shared: tuple) -> tuple[Any, Any]:
        """The layer loop as a jax.lax.scan reading each layer's params through pick_layer."""
        cfg, n = self.cfg, self.num_layers
        layer = self.layer(cfg, parent=None)
        stacked = jax.lax.stop_gradient(params)

        def body(c, inputs):
            index, shadow, x = inputs
            if cfg.cpu_matvec and cpu_kernels.available():
                return layer.apply({"params": layer_refs(stacked, index)}, c, x, *shared)
            return layer.apply({"params": pick_layer(stacked, shadow, index)}, c, x, *shared)

        policy = remat_policy(cfg.remat_policy)
        if policy is not None:
            body = jax.checkpoint(body, policy=policy, prevent_cse=not cfg.scan_layers)
        return jax.lax.scan(body, carry, (jnp.arange(n), params, xs), length=n,
                            unroll=1 if cfg.scan_layers else n)


def layer_stack(layer: type[nn.Module], cfg: ExecConfig, num_layers: int, broadcast_args: int, name: str) -> nn.Module:
    """A LayerStack of `layer` named `name` (see LayerStack)."""
    return LayerStack(layer, cfg, num_layers, broadcast_args, name=name)
