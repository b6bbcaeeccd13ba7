"""KV-cache generation: a jitted prefill, then jitted decode chunks (lax.while_loops of up to k steps).

Shapes are static: prompts are left-padded to a length bucket, the cache holds
bucket + max_new_tokens slots, and the batch always has `batch_size` rows, so a run compiles
once per (bucket, batch size, max_new_tokens, sampling setting). Attention reads only the filled
part of the cache, to within a factor of two: prefill attends over the prompt alone, and each decode
call runs its steps in segments whose cache view (a static slice) doubles (`kv_segments`). EOS ends a
row on the device; stop strings are checked on the host between chunks (`chunk_schedule`: everything in
one call unless text is read between calls), which is also when streamed text is handed out. With a mesh the params are placed as in training (tree_shardings of
their logical axes) and the cache is sharded over batch and KV heads, so a model too big for one
device is served across several (use tensor parallelism: `make_mesh(data=1, tensor=-1)`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from xllava_jax.infer.batching import Images, PromptBatch, collate
from xllava_jax.infer.sampling import SamplingConfig, choose_tokens, mark_seen
from xllava_jax.infer.streaming import TextStream
from xllava_jax.models.cpu_kernels import mapped_leaves
from xllava_jax.models.llama import CACHE_LENGTH_AXIS, KVCache, Llama, LlamaConfig, init_cache
from xllava_jax.models.llava import Llava, LlavaConfig
from xllava_jax.models.params import abstract_params, param_logical_axes
from xllava_jax.sharding import DEFAULT_RULES, Rules, spec_for, tree_shardings

CACHE_AXES = (None, "activation_batch", "kv_heads", None, None)  # [layers, B, kv_heads, max_len, head_dim]
DEFAULT_STEPS_PER_CALL = None  # auto: see chunk_schedule
FIRST_CHUNK, MAX_CHUNK = 16, 128  # auto chunks with stop strings or streaming: 16, 32, 64, 128, 128, ...
# One decode call costs ~35 ms of host round trip on a 2-core CPU, about 7 batch-1 steps of the bench model
# (bench/PROFILE.md): 128-step chunks keep that under ~5%, and doubling from 16 finds an early stop string soon.
MIN_SEGMENT = 16  # decode steps of the first cache-view segment (kv_segments)
MAX_SEGMENTS = 4  # at most this many loop bodies (compilations of the step) per decode call


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """What to generate: length, sampling, when to stop, and the batch shape."""

    max_new_tokens: int = 128
    sampling: SamplingConfig = SamplingConfig()
    stop_strings: tuple[str, ...] = ()  # cut the text before the first one (needs a tokenizer)
    eos_ids: tuple[int, ...] | None = None  # ids that end a row; None: the tokenizer's EOS
    seed: int = 0
    batch_size: int = 8  # rows per compiled batch (short batches are padded)
    steps_per_call: int | None = DEFAULT_STEPS_PER_CALL  # decode steps per jitted call; 0 = all in one call;
    # None = auto (chunk_schedule): all in one call unless stop strings or streaming read text between calls
    prompt_buckets: tuple[int, ...] | None = None  # padded prompt lengths (None: see batching.bucket_length)

    def validate(self) -> None:
        """Raise ValueError naming any out-of-range setting."""
        self.sampling.validate()
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")
        if self.steps_per_call is not None and self.steps_per_call < 0:
            raise ValueError(f"steps_per_call={self.steps_per_call} must be >= 0 (0 = all, None = auto)")


@dataclasses.dataclass(frozen=True)
class Generation:
    """One prompt's output: generated ids (without the EOS), text, and why it ended (eos | stop | length)."""

    tokens: list[int]
    text: str
    finish_reason: str


class DecodeState(NamedTuple):
    """Everything a decode step reads and writes (device arrays)."""

    cache: KVCache
    key_mask: jax.Array  # [B, P + max_new] 1 = real slot (prompt padding is 0, generated slots 1)
    tokens: jax.Array  # [B, max_new] generated ids (0 after a row is done)
    done: jax.Array  # [B] bool
    step: jax.Array  # [] int32, tokens generated so far
    next_position: jax.Array  # [B] int32, position id of the next input token
    seen: jax.Array  # [B, V] bool (prompt and output ids, for the repetition penalty) or [B, 0]
    rng: jax.Array


def text_config(cfg: LlavaConfig | LlamaConfig) -> LlamaConfig:
    """The decoder config of a LLaVA or LLaMA model."""
    return cfg.text if isinstance(cfg, LlavaConfig) else cfg


def last_logits(module: Llava | Llama, input_ids, pixel_values, key_mask, positions, cache, cache_index):
    """(float32 logits [B, 1, V] of the last input position, updated cache); run via model.apply(method=...)."""
    if isinstance(module, Llava):
        lm, embeds = module.language_model, module.embed(input_ids, pixel_values)
    else:
        lm, embeds = module, module.embed(input_ids)
    hidden, cache = lm.decode(embeds, key_mask, positions, None, cache, cache_index)
    return lm.logits(hidden[:, -1:]), cache


def constrain_cache(cache: KVCache, mesh: Mesh | None, rules: Rules) -> KVCache:
    """The cache pinned to (batch, KV-head) sharding on `mesh` (dims the mesh does not divide stay replicated)."""
    if mesh is None:
        return cache
    sharding = NamedSharding(mesh, spec_for(PartitionSpec(*CACHE_AXES), cache.k.shape, mesh, rules))
    return KVCache(*(jax.lax.with_sharding_constraint(x, sharding) for x in cache))


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "sampling", "mesh", "rules"))
def prefill(model: Llava | Llama, params: Any, input_ids: jax.Array, mask: jax.Array, positions: jax.Array,
            pixel_values: jax.Array | None, eos_ids: jax.Array, rng: jax.Array, num_rows: jax.Array | int | None = None,
            *, max_new_tokens: int, sampling: SamplingConfig, mesh: Mesh | None = None,
            rules: Rules = DEFAULT_RULES) -> DecodeState:
    """Run the prompts through the model into a fresh cache and choose each row's first token (rows from
    `num_rows` on are batch padding: done from the start, so they never keep the decode loop running)."""
    b, p = input_ids.shape
    cfg = text_config(model.cfg)
    cache = constrain_cache(init_cache(cfg, b, p), mesh, rules)  # attend over the prompt only
    logits, cache = model.apply({"params": params}, input_ids, pixel_values, mask, positions, cache, 0,
                                method=last_logits)
    slots = [(0, 0)] * cache.k.ndim
    slots[CACHE_LENGTH_AXIS] = (0, max_new_tokens)
    cache = constrain_cache(KVCache(*(jnp.pad(x, slots) for x in cache)), mesh, rules)
    key_mask = jnp.concatenate([mask, jnp.ones((b, max_new_tokens), mask.dtype)], axis=1)
    seen = jnp.zeros((b, cfg.vocab_size if sampling.repetition_penalty != 1.0 else 0), bool)
    if seen.shape[1]:
        seen = jnp.zeros(seen.shape, jnp.int32).at[jnp.arange(b)[:, None], input_ids].add(mask) > 0
    rng, key = jax.random.split(rng)
    first = choose_tokens(logits[:, 0], key, seen if seen.shape[1] else None, sampling)
    seen = mark_seen(seen, first) if seen.shape[1] else seen
    tokens = jnp.zeros((b, max_new_tokens), jnp.int32).at[:, 0].set(first)
    done = jnp.isin(first, eos_ids)
    if num_rows is not None:
        done = done | (jnp.arange(b) >= num_rows)
    return DecodeState(cache, key_mask, tokens, done, jnp.int32(1),
                       mask.sum(axis=1).astype(jnp.int32), seen, rng)


def kv_segments(max_new: int, first: int = MIN_SEGMENT, most: int = MAX_SEGMENTS) -> tuple[int, ...]:
    """Step counts ending the decode segments: segment j runs the steps below ends[j] on a cache view of
    prompt + ends[j] slots; ends halve back from max_new (at most `most`, none below `first`)."""
    ends = [max_new]
    while len(ends) < most and ends[-1] // 2 >= first:
        ends.append(ends[-1] // 2)
    return tuple(reversed(ends))


def chunk_schedule(config: GenerationConfig, reads_text: bool) -> Callable[[int], int]:
    """Decode steps of the next call given the tokens so far: `steps_per_call` when set (0 = all); auto
    (None): all in one call unless text is read between calls (stop strings, streaming), then chunks that
    double from FIRST_CHUNK to MAX_CHUNK (the per-call round trip stays a small share of the time)."""
    k = config.steps_per_call
    if k is None:
        if not reads_text:
            return lambda step: config.max_new_tokens
        return lambda step: min(MAX_CHUNK, max(FIRST_CHUNK, 1 << max(0, step - 1).bit_length()))
    return lambda step: k or config.max_new_tokens


@functools.partial(jax.jit, static_argnames=("model", "sampling"), donate_argnames=("state",))
def decode(model: Llava | Llama, params: Any, state: DecodeState, eos_ids: jax.Array, until_step: jax.Array, *,
           sampling: SamplingConfig) -> DecodeState:
    """Generate tokens until every row is done or `until_step` tokens exist (lax.while_loops on the device, one
    per kv_segments segment, each attending over a static view of the cache that holds the tokens so far)."""
    b, max_new = state.tokens.shape
    full = state.key_mask.shape[1]
    prompt_len = full - max_new
    use_seen = state.seen.shape[1] > 0

    def running(s: DecodeState) -> jax.Array:
        return (s.step < jnp.minimum(until_step, max_new)) & ~jnp.all(s.done)

    def step(s: DecodeState) -> DecodeState:
        last = jax.lax.dynamic_index_in_dim(s.tokens, s.step - 1, axis=1)  # [B, 1]
        logits, cache = model.apply({"params": params}, last, None, s.key_mask, s.next_position[:, None], s.cache,
                                    prompt_len + s.step - 1, method=last_logits)
        rng, key = jax.random.split(s.rng)
        nxt = choose_tokens(logits[:, 0], key, s.seen if use_seen else None, sampling)
        nxt = jnp.where(s.done, 0, nxt)
        tokens = jax.lax.dynamic_update_index_in_dim(s.tokens, nxt[:, None], s.step, axis=1)
        seen = mark_seen(s.seen, nxt) if use_seen else s.seen
        return DecodeState(cache, s.key_mask, tokens, s.done | jnp.isin(nxt, eos_ids), s.step + 1,
                           s.next_position + 1, seen, rng)

    def segment(s: DecodeState, end: int) -> DecodeState:
        """The steps below `end` on the first prompt_len + end cache slots (the slots those steps write)."""
        view = prompt_len + end
        if view >= full:
            return jax.lax.while_loop(running, step, s)
        sub = s._replace(cache=KVCache(*(jax.lax.slice_in_dim(x, 0, view, axis=CACHE_LENGTH_AXIS) for x in s.cache)),
                         key_mask=s.key_mask[:, :view])
        sub = jax.lax.while_loop(lambda x: running(x) & (x.step < end), step, sub)
        cache = KVCache(*(jax.lax.dynamic_update_slice_in_dim(x, y, 0, axis=CACHE_LENGTH_AXIS)
                          for x, y in zip(s.cache, sub.cache)))
        return sub._replace(cache=cache, key_mask=s.key_mask)

    for end in kv_segments(max_new):
        state = jax.lax.cond(running(state) & (state.step < end), functools.partial(segment, end=end),
                             lambda s: s, state)
    return state


def place_params(cfg: LlavaConfig | LlamaConfig, params: Any, mesh: Mesh | None, rules: Rules = DEFAULT_RULES) -> Any:
    """Params put on `mesh` the way training shards them (logical axes -> mesh axes), or on the first local device
    without a mesh; one leaf at a time, each transfer finished before the next (arrays already placed stay)."""
    if mesh is not None:
        if mapped_leaves(params):
            raise ValueError("these params leave Linear weights in a mapped checkpoint file (load_model without a "
                             "mesh and with bf16 compute); they run on one CPU only: load with mesh= to shard them")
        shardings = tree_shardings(param_logical_axes(cfg), abstract_params(cfg), mesh, rules)
    else:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree_util.tree_map(lambda _: device, params)
    return jax.tree_util.tree_map(lambda x, s: jax.device_put(x, s).block_until_ready(), params, shardings)


def finish(ids: np.ndarray, eos_ids: Sequence[int], stream: TextStream | None) -> Generation:
    """The Generation of one row's generated ids (cut at the first EOS; stop strings already seen by `stream`)."""
    ids = [int(i) for i in ids]
    hit = next((j for j, t in enumerate(ids) if t in eos_ids), None)
    reason = "length"
    if hit is not None:
        ids, reason = ids[:hit], "eos"
    if stream is not None:
        if stream.stopped:
            ids, reason = ids[:stream.num_tokens], "stop"
        else:
            stream.update(ids, final=True)
    return Generation(ids, stream.text if stream is not None else "", reason)


class Engine:
    """A model with its params on the device(s) (on a mesh when one is given, else the first local device),
    generating from token-id prompts. Host (NumPy) params are copied over leaf by leaf; the engine keeps only
    device arrays (infer.loading.load_model returns them already placed)."""

    def __init__(self, model: Llava | Llama, params: Any, tokenizer: Any = None, mesh: Mesh | None = None,
                 rules: Rules = DEFAULT_RULES):
        self.model, self.tokenizer, self.mesh, self.rules = model, tokenizer, mesh, tuple(rules)
        self.params = place_params(model.cfg, params, mesh, rules)

    @contextlib.contextmanager
    def sharding_context(self) -> Iterator[None]:
        """The mesh and logical-axis rules active while tracing and running (nothing without a mesh)."""
        if self.mesh is None:
            yield
            return
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield

    def eos_ids(self, config: GenerationConfig) -> tuple[int, ...]:
        """The ids that end a row."""
        if config.eos_ids is not None:
            return tuple(config.eos_ids)
        if self.tokenizer is None:
            raise ValueError("GenerationConfig.eos_ids is None and the engine has no tokenizer to take EOS from")
        return (self.tokenizer.eos_id,)

    def check_prompts(self, prompts: Sequence[Sequence[int]], images: Sequence[Images] | None) -> None:
        """Raise ValueError naming a prompt whose image tokens do not match its images."""
        cfg = self.model.cfg
        if not isinstance(cfg, LlavaConfig):
            if images is not None and any(len(x) for x in images):
                raise ValueError(f"{type(self.model).__name__} is text-only but images were given")
            return
        if images is not None and len(images) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} image lists")
        for i, prompt in enumerate(prompts):
            count = int(np.sum(np.asarray(prompt) == cfg.image_token_id))
            have = len(images[i]) if images is not None else 0
            if count != have * cfg.num_image_tokens:
                raise ValueError(f"prompt {i} has {count} image tokens (id {cfg.image_token_id}) but {have} "
                                 f"image(s) of {cfg.num_image_tokens} tokens each were given")

    def generate(self, prompts: Sequence[Sequence[int]], images: Sequence[Images] | None = None,
                 config: GenerationConfig = GenerationConfig(),
                 on_text: Callable[[int, str], None] | None = None) -> list[Generation]:
        """Generations for token-id prompts (each holding N image tokens per image in `images[i]`).

        Prompts are grouped by length into batches of `config.batch_size`; `on_text(i, delta)`
        receives prompt i's text as it becomes safe to show (streaming; needs a tokenizer).
        """
        config.validate()
        if config.stop_strings and self.tokenizer is None:
            raise ValueError("stop_strings need a tokenizer")
        self.check_prompts(prompts, images)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        out: list[Generation | None] = [None] * len(prompts)
        for start in range(0, len(order), config.batch_size):
            rows = order[start:start + config.batch_size]
            batch_images = [images[i] for i in rows] if images is not None else None
            results = self.generate_batch([prompts[i] for i in rows], batch_images, config, start // config.batch_size,
                                          (lambda r, d: on_text(rows[r], d)) if on_text else None)
            for i, result in zip(rows, results):
                out[i] = result
        return out  # type: ignore[return-value]

    def stream(self, prompt: Sequence[int], images: Images = (), config: GenerationConfig = GenerationConfig()
               ) -> Iterator[str]:
        """Text deltas of one prompt as they are generated (then the generator returns its Generation)."""
        deltas: list[str] = []
        config = dataclasses.replace(config, batch_size=1)
        generator = self._stream_batch([prompt], [list(images)] if isinstance(self.model.cfg, LlavaConfig) else None,
                                       config, 0, lambda _, d: deltas.append(d))
        while True:
            try:
                next(generator)
            except StopIteration as stop:
                yield from deltas
                return stop.value[0]
            yield from deltas
            deltas.clear()

    def generate_batch(self, prompts: Sequence[Sequence[int]], images: Sequence[Images] | None,
                       config: GenerationConfig, batch_index: int = 0,
                       on_text: Callable[[int, str], None] | None = None) -> list[Generation]:
        """Generations of at most `config.batch_size` prompts run as one static-shape batch."""
        generator = self._stream_batch(prompts, images, config, batch_index, on_text)
        while True:
            try:
                next(generator)
            except StopIteration as stop:
                return stop.value

    def _stream_batch(self, prompts, images, config: GenerationConfig, batch_index: int, on_text):
        """Generator over decode chunks of one batch (yields after each chunk); returns the Generations."""
        cfg = self.model.cfg
        eos = self.eos_ids(config)
        pad_id = (cfg.pad_token_id if isinstance(cfg, LlavaConfig) else None) or 0
        image_shape = (cfg.vision.image_size, cfg.vision.image_size, cfg.vision.num_channels) \
            if isinstance(cfg, LlavaConfig) else None
        batch = collate(prompts, images, config.batch_size, pad_id, config.prompt_buckets, image_shape)
        streams = [TextStream(self.tokenizer, config.stop_strings) for _ in prompts] if self.tokenizer else None
        eos_array = jnp.asarray(eos, jnp.int32)
        rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), batch_index)
        chunk = chunk_schedule(config, reads_text=bool(config.stop_strings) or on_text is not None)
        with self.sharding_context():
            state = prefill(self.model, self.params, *self.device_batch(batch), eos_array, rng,
                            jnp.int32(len(prompts)), max_new_tokens=config.max_new_tokens, sampling=config.sampling, mesh=self.mesh,
                            rules=self.rules)
            step = 1  # prefill chose one token; the first chunk is dispatched before reading anything back
            while True:
                if step < config.max_new_tokens:
                    state = decode(self.model, self.params, state, eos_array, jnp.int32(step + chunk(step)),
                                   sampling=config.sampling)
                tokens, device_done, step = jax.device_get((state.tokens, state.done, state.step))
                done = self.check_streams(tokens[:len(prompts), :step], device_done, eos, streams, on_text,
                                          final=step >= config.max_new_tokens)
                if done.all() or step >= config.max_new_tokens:
                    break
                yield
                if (done != device_done).any():  # stop strings or padding rows: tell the device
                    state = state._replace(done=jnp.asarray(done))
        return [finish(tokens[r, :step], eos, streams[r] if streams else None) for r in range(len(prompts))]

    @staticmethod
    def check_streams(tokens: np.ndarray, done: np.ndarray, eos: Sequence[int], streams: list[TextStream] | None,
                      on_text: Callable[[int, str], None] | None, final: bool = False) -> np.ndarray:
        """Feed new ids to the text streams (`final`: no more will come); returns `done` with stopped
        (and padding) rows marked."""
        done = np.array(done)
        done[len(tokens):] = True
        for r, ids in enumerate(tokens):
            if streams is None or streams[r].stopped:
                continue
            hit = next((j for j, t in enumerate(ids) if t in eos), None)
            delta = streams[r].update(ids[:hit] if hit is not None else ids, final=final or hit is not None)
            if delta and on_text is not None:
                on_text(r, delta)
            done[r] |= streams[r].stopped
        return done

    def device_batch(self, batch: PromptBatch) -> tuple:
        """The batch arrays on the device(s): rows over the mesh's batch axes where they divide."""
        arrays = (batch.input_ids, batch.mask, batch.positions, batch.pixel_values)
        if self.mesh is None:
            return tuple(None if a is None else jnp.asarray(a) for a in arrays)
        placed = []
        for a in arrays:
            spec = spec_for(PartitionSpec("activation_batch"), a.shape, self.mesh, self.rules) if a is not None else None
            placed.append(None if a is None else jax.device_put(a, NamedSharding(self.mesh, spec)))
        return tuple(placed)


def generate(model: Llava | Llama, params: Any, tokenizer: Any, prompts: Sequence[Sequence[int]],
             images: Sequence[Images] | None = None, config: GenerationConfig = GenerationConfig(), *,
             mesh: Mesh | None = None) -> list[Generation]:
    """Generations for token-id prompts (see Engine.generate); `tokenizer` may be None when
    `config.eos_ids` is set and no text or stop strings are needed."""
    return Engine(model, params, tokenizer, mesh).generate(prompts, images, config)
