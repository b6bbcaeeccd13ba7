"""The one base builder every config file starts from: every training knob with its default and meaning.

A config file (configs/*.py) calls `base_config(stage)` and changes what differs. Sizes in `model`
are used only when `init.source == "random"`; otherwise the architecture comes from the HF
directories or the checkpoint, and only the execution settings (dtype, attention, scan, remat)
of `model` are applied on top.

The schema is locked: `base_config` returns a locked ConfigDict (a config file that sets a key defined
here nowhere fails where it sets it, naming the key), and `train.validate` checks any config against it
(a key it does not define, or one it lacks, is an error naming the key). The keys a run has besides its
stage settings are `stages` and `recipe` (`stage_list`, `with_recipe`).
"""

from __future__ import annotations

import ml_collections

from xllava_jax.sharding import DEFAULT_RULES

# Parameter groups (top-level keys of a LLaVA's params) trained by default in each stage.
STAGE_TRAINABLE = {0: "language_model", 1: "projector", 2: "projector,language_model"}
TEXT_FORMATS = ("text", "tfds")  # data.format values holding text documents (stage 0)
CONVERSATION_FORMATS = ("llava", "arrayrecord")  # data.format values holding conversations (stages 1 and 2)


def model_config() -> ml_collections.ConfigDict:
    """Architecture (for random init) and execution settings (always applied)."""
    m = ml_collections.ConfigDict()
    m.kind = "llava"  # llava | llama (stage 0 may train a bare LLaMA decoder)
    # execution: how the towers run, applied whatever the init source
    m.dtype = "float32"  # compute dtype: float32 | bfloat16 | float16
    m.param_dtype = "float32"  # storage dtype of parameters (and so of optimizer moments)
    # storage dtype of the frozen groups ('' = param_dtype): bf16 halves a frozen tower's memory; each stage
    # stores its frozen groups once, at the precision they were loaded in (<workdir>/frozen, docs/training.md)
    m.frozen_dtype = ""
    m.attention = "auto"  # auto (splash on TPU, cudnn on NVIDIA GPUs, else xla) | xla | cudnn | splash
    m.scan_layers = True  # nn.scan over layers (False unrolls the same parameters)
    m.remat_policy = "none"  # none | full | dots | dots_no_batch | any jax.checkpoint_policies name
    # text tower sizes (random init only); vocab_size -1 = the tokenizer's vocabulary padded to pad_vocab_to
    m.text = ml_collections.ConfigDict(dict(
        vocab_size=-1, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=4096,
        tie_word_embeddings=False))
    # vision tower sizes (random init only)
    m.vision = ml_collections.ConfigDict(dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336,
        patch_size=14, hidden_act="quick_gelu"))
    m.projector_type = "mlp2x_gelu"  # mlp2x_gelu | linear
    m.vision_feature_layer = -2  # CLIP hidden state the projector reads (HF index)
    return m


def init_config() -> ml_collections.ConfigDict:
    """Where the initial parameters come from (a resumed run ignores this: it restores its own checkpoint)."""
    i = ml_collections.ConfigDict()
    i.source = "random"  # random | hf (llama_dir + clip_dir) | hf_llava | hf_llama | checkpoint | previous
    i.llama_dir = ""  # HF LLaMA/Vicuna directory (source hf, hf_llama)
    i.clip_dir = ""  # HF CLIP directory (source hf; or a stage-0 LLaMA checkpoint becoming a LLaVA)
    i.llava_dir = ""  # HF LLaVA directory (source hf_llava)
    i.checkpoint = ""  # Orbax checkpoint dir or workdir (source checkpoint); params only, fresh optimizer
    i.new_rows_init = "mean"  # new embedding rows when the tokenizer is bigger: mean | mean_cov | normal
    i.pad_vocab_to = 64  # vocabulary padded to a multiple of this
    return i


def data_config() -> ml_collections.ConfigDict:
    """Training data: files, their weights and languages, template, length, packing, images, LRM task mix."""
    d = ml_collections.ConfigDict()
    # llava: LLaVA JSON/JSONL conversations (parallel files pick `langs`); text: .txt/.jsonl corpora (stage 0);
    # arrayrecord: shard directories (or .array_record files) written by `python -m xllava_jax.data pack`;
    # tfds: TFDS text datasets, each file 'name' or 'name:split' (data_dir: data.root; stage 0)
    d.format = "llava"
    d.files = ()  # data files (see format); relative to data.root
    d.weights = ()  # mixture weight per file (empty: concatenate)
    d.langs = ()  # language per file for parallel {lang: text} files ('' = a plain file); empty: all plain
    d.root = ""  # directory that relative files and image paths are resolved against
    d.image_root = ""  # image directory (default: data.root)
    d.template = "vicuna_v1"  # conversation template: plain | vicuna_v1 | llava_llama_2
    # the instruction line the data's short-answer questions end with (recorded with each checkpoint: evaluation
    # asks such questions with it; None = not known, evaluation uses each benchmark's own, '' = none)
    d.instruction = ml_collections.config_dict.placeholder(str)
    d.max_len = 2048  # tokens per row
    d.length_buckets = ()  # pad each batch to the smallest of these lengths that fits (one compile each); () = max_len
    d.pack = False  # pack several samples into a row (segment ids keep them apart); epochs count packed rows
    d.split_documents = True  # text documents longer than max_len are split into pieces (False: truncated)
    d.max_images_per_row = 1  # image slots per row (with packing, the most images a packed row holds)
    d.pad_image = True  # LLaVA's `image_aspect_ratio pad`
    d.group_by_length = False  # LLaVA's group_by_modality_length
    d.num_workers = 0  # grain worker processes (0 = in the main process)
    d.shuffle = True
    # LRM-LLaVA: build MVQA / EP-VQA / BVQA samples from the parallel files in `task_mix_files`
    d.task_mix = ml_collections.ConfigDict(dict(
        files=(),  # parallel multilingual files turned into task instructions (added to the mixture)
        weight=1.0,  # mixture weight of the task-mix samples against `files`
        tasks="mvqa",  # comma list with optional weights: "mvqa" (pretraining), "mvqa,ep_vqa,bvqa" (fine-tuning)
        lang_weights="",  # e.g. "en:0.5,ko:0.25,zh:0.25" ('' = non-English languages share equally)
        non_english_ratio=1.0,  # non-English volume / English volume (1.0 = English 50%)
    ))
    return d


def base_config(stage: int = 1) -> ml_collections.ConfigDict:
    """Every knob with its default; configs/*.py change what differs."""
    c = ml_collections.ConfigDict()
    c.stage = stage  # 0: causal LM on text, 1: projector alignment, 2: visual instruction tuning
    c.seed = 0  # parameter init, data order
    c.tokenizer = ""  # tokenizer.model or HF tokenizer dir (vocabulary-expanded for X-LLaVA)
    c.model = model_config()
    c.init = init_config()
    c.data = data_config()
    c.eval_data = data_config()  # held-out data for eval loss / modality gap (files empty: no eval)
    c.train = ml_collections.ConfigDict(dict(
        trainable="",  # comma list of param groups (vision_tower, projector, language_model); '' = by stage
        batch_size=128,  # global batch (rows) per optimizer step, over all processes
        grad_accum=1,  # microbatches per step (batch_size / grad_accum rows each)
        num_steps=0,  # optimizer steps; 0 = num_epochs over the data
        num_epochs=1.0,
        consistency_weight=0.0,  # lambda of the cross-modal consistency loss (docs/training.md)
        consistency_text_grad=False,  # let that loss's gradient reach the word embeddings (a_i); off: stop_gradient
        max_nonfinite=5,  # K: this many non-finite steps in a row stop the run (noticed one step later)
        sigterm_check_steps=10,  # several processes: SIGTERM is agreed on (a device sync) every this many steps
    ))
    c.optim = ml_collections.ConfigDict(dict(
        lr=1e-3,  # peak learning rate
        warmup_ratio=0.03,  # linear warmup over this share of the steps, then cosine to end_lr_ratio * lr
        end_lr_ratio=0.0,
        weight_decay=0.0,  # AdamW decoupled decay; never on norms and biases
        b1=0.9, b2=0.999, eps=1e-8,
        clip_norm=1.0,  # global gradient-norm clipping (0 = off)
    ))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # one size may be -1 (the rest)
    c.logical_axis_rules = tuple((k, v) for k, v in DEFAULT_RULES)  # logical axis -> mesh axes
    c.checkpoint = ml_collections.ConfigDict(dict(
        every_steps=1000,  # save cadence (also at the end and on SIGTERM)
        keep=3,  # most recent checkpoints kept
        async_save=True,
    ))
    c.eval = ml_collections.ConfigDict(dict(every_steps=0, num_batches=8, batch_size=0))  # 0: off / train batch
    c.log = ml_collections.ConfigDict(dict(
        every_steps=10,  # metrics written every this many steps
        progress=True,  # tqdm progress bar with ETA
        tensorboard=True,  # TensorBoard events in DIR/tensorboard
        peak_tflops=0.0,  # per-device peak for MFU (989 for H100/H200 bf16); 0 = MFU not reported
    ))
    c.stages = ()  # a stage list (stage_list) names its sub-configs here; a single stage has none
    c.lock()
    return c


# What wraps a run besides the stage loop: '' nothing; 'demo' (xllava_jax.demo.run) writes the demo's dataset and
# tokenizers into data.root first and, for the whole stage list, evaluates and exports at the end.
RECIPES = ("", "demo")
RUN_KEYS = ("stages", "recipe")  # the keys of a stage list besides its stages; `recipe` also on a single stage


def with_recipe(c: ml_collections.ConfigDict, recipe: str) -> ml_collections.ConfigDict:
    """`c` (a stage config or a stage list) run under `recipe` (one of RECIPES)."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe {recipe!r}; expected one of {RECIPES}")
    with c.unlocked():
        c.recipe = recipe
    return c


def recipe_of(c: ml_collections.ConfigDict) -> str:
    """The recipe a config runs under ('' when it names none)."""
    return c.recipe if "recipe" in c else ""


def stage_list(stages: dict[str, ml_collections.ConfigDict], recipe: str = "") -> ml_collections.ConfigDict:
    """A stage list: each stage config run in order in DIR/<name>, a stage with init.source 'previous' starting
    from the one before (see README "Training")."""
    c = ml_collections.ConfigDict()
    c.stages = tuple(stages)
    for name, stage in stages.items():
        c[name] = stage
    with_recipe(c, recipe)
    c.lock()
    return c


def tiny_model(c: ml_collections.ConfigDict, hidden: int = 64, layers: int = 2, vision_hidden: int = 32,
               image_size: int = 32, patch: int = 8) -> ml_collections.ConfigDict:
    """Shrink `c.model` to a tiny random LLaVA (demo and tests)."""
    c.model.text.update(dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048))
    c.model.vision.update(dict(hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                               num_hidden_layers=layers, num_attention_heads=4, image_size=image_size,
                               patch_size=patch))
    return c


def llava15_recipe(stage: int, llm: str, *, vision: str = "clip-vit-large-patch14-336", data_dir: str = "data",
                   stage1_workdir: str = "") -> ml_collections.ConfigDict:
    """LLaVA-1.5 stage 1 or 2 with the published hyperparameters (docs/reference.md) on a 13B/7B-class model.

    stage 1: projector only, global batch 256, lr 1e-3, template plain, blip_laion_cc_sbu_558k;
    stage 2: projector + LLM, global batch 128, lr 2e-5, template vicuna_v1, llava_v1_5_mix665k,
    group_by_modality_length, images padded to a square (stage 1: resized + centre-cropped). Both: 1 epoch, warmup ratio 0.03, cosine, no weight decay, max length 2048,
    bf16 compute (fp32 master weights, frozen towers stored in bf16), full remat, FSDP over every device.
    """
    if stage not in (1, 2):
        raise ValueError(f"LLaVA-1.5 has stages 1 and 2, got {stage}")
    c = base_config(stage)
    c.tokenizer = llm  # the LLM's HF directory holds tokenizer.model (<image>/<pad> appended like llava-hf)
    c.model.update(dtype="bfloat16", param_dtype="float32", frozen_dtype="bfloat16", remat_policy="full")
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    # pretrain.sh sets no --image_aspect_ratio (resize + centre crop); finetune.sh sets `pad`
    c.data.update(root=data_dir, max_len=2048, pad_image=stage == 2, num_workers=8)
    c.train.update(num_epochs=1.0, num_steps=0)
    c.optim.update(warmup_ratio=0.03, weight_decay=0.0, clip_norm=1.0)
    c.checkpoint.update(every_steps=500, keep=2)
    if stage == 1:
        c.init.update(source="hf", llama_dir=llm, clip_dir=vision)
        c.data.update(files=("blip_laion_cc_sbu_558k.json",), template="plain", image_root=f"{data_dir}/LLaVA-Pretrain/images")
        c.train.batch_size = 256
        c.optim.lr = 1e-3
        c.data.length_buckets = (640, 768, 1024, 1536)  # plain rows are ~580-700 tokens, not 2048
    else:
        c.init.update(source="checkpoint", checkpoint=stage1_workdir or "workdirs/llava15_stage1")
        c.data.update(files=("llava_v1_5_mix665k.json",), template="vicuna_v1", group_by_length=True)
        c.train.batch_size = 128
        c.optim.lr = 2e-5
    return c
