r"""MQAR with any catalogued mechanism: ``configs/mechanisms.py:<name>[,local|,compare]``.

  python -m attnlab.train --config configs/mechanisms.py:deberta --workdir /tmp/mqar_deberta
  python -m attnlab.train --config configs/mechanisms.py:sigmoid,local --workdir /tmp/smoke

The base is ``configs/mqar.py`` (``local`` = its tiny variant; ``compare`` = the small budget
of ``python -m attnlab.train.compare --config compare``). ``OVERRIDES`` below holds the
dotted config keys that select each catalogue entry and set its hyperparameters: the library
(``attnlab.core``) knows no trainer keys, so this is where they live. A mechanism missing from
``OVERRIDES`` is selected with ``model.attention.mechanism = <name>`` and its defaults.
``python -m attnlab.catalogue`` lists the names (grouped by kind).
"""

import importlib.util
import os

import attnlab
import attnlab.models  # noqa: F401  (registers every module, pooling head and variant)

# name -> dotted overrides on top of configs/mqar.py. Entries that need no more than
# ``model.attention.mechanism = name`` may be left out (a new mechanism needs no edit here).
# Mechanisms with only a dense reference pin it ("xla"): a base config may pin another. Those
# with a memory-efficient path (score_mod on "chunked") use "auto".
OVERRIDES = {
    'aaren': {
        'model.attention.mechanism': 'aaren',
        'model.position': 'none',  # linear / recurrent modules take no positions
    },
    'attention_drop': {
        'model.num_layers': 2,
        'model.drop_attention_layers': (1,),
    },
    'axial': {
        'model.attention.mechanism': 'axial',
        'model.attention.kwargs.grid_shape': (-1, 8),
    },
    'biformer': {
        'model.attention.mechanism': 'biformer',
        'model.attention.kwargs.grid_shape': (-1, 8),
        'model.attention.kwargs.region_size': 2,
        'model.attention.kwargs.top_k': 3,
    },
    'complexformer': {
        'model.attention.mechanism': 'complexformer',
        'model.position': 'none',
        'model.attention.implementation': 'xla',
    },
    'crate': {
        'model.attention.mechanism': 'crate',
        'model.position': 'learned',
        'model.attention.implementation': 'xla',
    },
    'deberta': {
        'model.attention.mechanism': 'deberta',
        'model.position': 'none',
        'model.attention.kwargs.max_distance': 16,
        'model.attention.kwargs.log_buckets': False,
        'model.attention.implementation': 'auto',
    },
    'decon_approx': {
        'model.attention.mechanism': 'decon_approx',
        'model.attention.implementation': 'auto',
    },
    'decon_nonapprox': {
        'model.attention.mechanism': 'decon_nonapprox',
        'model.attention.implementation': 'auto',
        'model.position': 'none',
        'model.attention.kwargs.q_activation': 'silu',
    },
    'decon_staticqk': {
        'model.attention.mechanism': 'decon_staticqk',
        'model.attention.implementation': 'auto',
    },
    'deltanet': {
        'model.attention.mechanism': 'deltanet',
        'model.position': 'none',  # linear / recurrent modules take no positions
    },
    'echoatt': {
        'model.num_layers': 2,
        'model.echo.anchors': (0,),
        'model.echo.sharing_layers': (1,),
    },
    'first_router': {
        'model.num_layers': 2,
        'model.router.enabled': True,
        'model.router.layers': (),
        'model.router.hidden_dim': 16,
        'model.router.threshold': 0.5,
        'model.router.train_gate': 'soft',
        'model.router.decode_policy': 'token',
        'model.router.init_bias': 3.0,
    },
    'gated_deltanet': {
        'model.attention.mechanism': 'gated_deltanet',
        'model.position': 'none',  # linear / recurrent modules take no positions
    },
    'gla': {
        'model.attention.mechanism': 'gla',
        'model.position': 'none',  # linear / recurrent modules take no positions
        'model.attention.kwargs.gate_rank': 16,
        'model.attention.kwargs.tau': 16.0,
    },
    'fit': {
        'model.attention.mechanism': 'fit',
        'model.attention.kwargs.group_size': 8,
        'model.attention.kwargs.num_latents': 2,
        'model.attention.implementation': 'xla',
    },
    'gpsa': {
        'model.attention.mechanism': 'gpsa',
        'model.position': 'none',
        'model.attention.kwargs.locality_strength': 1.0,
        'model.attention.kwargs.gate_init': 1.0,
        'model.attention.implementation': 'auto',
    },
    'halo': {
        'model.attention.mechanism': 'halo',
        'model.attention.kwargs.grid_shape': (-1, 8),
        'model.attention.kwargs.block_size': 4,
        'model.attention.kwargs.halo': 2,
        'model.attention.kwargs.relative': True,
    },
    'inline': {
        'model.attention.mechanism': 'inline',
        'model.position': 'none',  # linear / recurrent modules take no positions
        'model.attention.kwargs.local_window': 3,
    },
    'interleave': {
        'model.num_layers': 2,
        'model.attention.layer_mechanisms': ('softmax', 'mixer_fixed'),
    },
    'landmark': {
        'model.attention.mechanism': 'landmark',
        'model.attention.kwargs.block_size': 8,
        'model.attention.implementation': 'xla',
    },
    'layernorm_scaling': {
        'model.num_layers': 2,
        'model.norm': 'layernorm_scaled',
    },
    'linear_elu': {
        'model.attention.mechanism': 'linear_elu',
        'model.position': 'none',  # linear / recurrent modules take no positions
    },
    'lowrank_mha_pool': {
        'model.name': 'encoder_classifier',
        'data.name': 'mqar_classification',
        'model.num_classes': 128,
        'model.pooling': 'lowrank_mha_pool',
        'model.pooling_kwargs':
            {'num_heads': 4, 'rank': 1, 'context': 'learned', 'l2_normalize': True},
    },
    'mixer_fixed': {
        'model.attention.mechanism': 'mixer_fixed',
        'model.attention.kwargs.embedding': 'random',
        'model.attention.kwargs.embedding_std': 1.0,
    },
    'mixer_none': {
        'model.attention.mechanism': 'mixer_none',
        'model.attention.kwargs.hidden_dim': 0,
    },
    'moba': {
        'model.attention.mechanism': 'moba',
        'model.attention.kwargs.block_size': 8,
        'model.attention.kwargs.top_k': 2,
    },
    'momentum_ema': {
        'model.attention.mechanism': 'momentum_ema',
        'model.attention.kwargs.momentum': 0.9,
        'model.attention.kwargs.eta': 1.0,
        'model.attention.kwargs.include_current': False,
        'model.attention.implementation': 'xla',
    },
    'multilayer_pool': {
        'model.name': 'encoder_classifier',
        'data.name': 'mqar_classification',
        'model.num_classes': 128,
        'model.pooling': 'multilayer_pool',
        'model.pooling_kwargs':
            {'num_latents': 8, 'num_heads': 0, 'head_dim': 0, 'ff_mult': 4, 'summary': 'mean',
             'normalize': True},
    },
    'nalaformer': {
        'model.attention.mechanism': 'nalaformer',
        'model.position': 'none',  # linear / recurrent modules take no positions
        'model.attention.kwargs.norm_power': 2.0,
        'model.attention.kwargs.key_power': 2.0,
    },
    'ninformer': {
        'model.attention.mechanism': 'ninformer',
        'model.attention.kwargs.token_expansion': 1,
        'model.attention.kwargs.channel_mlp_dim': 0,
    },
    'prepbn': {
        'model.norm': 'layernorm_prepbn',
        'model.prepbn.warmup_steps': 0,
        'model.prepbn.decay_steps': 1000,
        'model.prepbn.momentum': 0.9,
        'model.prepbn.eta_init': 1.0,
    },
    'random_qk': {
        'model.attention.mechanism': 'random_qk',
        'model.position': 'learned',
        'model.attention.kwargs.qk_mean': 0.0,
        'model.attention.implementation': 'xla',
    },
    'retrieval_topk': {
        'model.attention.mechanism': 'retrieval_topk',
        'model.attention.kwargs.top_k': 8,
        'model.attention.kwargs.window': 4,
        'model.attention.implementation': 'xla',
    },
    'rcmha': {
        'model.attention.mechanism': 'rcmha',
        'model.position': 'none',
        'model.attention.kwargs.max_distance': 32,
        'model.attention.kwargs.kernel_size': 3,
        'model.attention.implementation': 'auto',
    },
    'retnet': {
        'model.attention.mechanism': 'retnet',
        'model.position': 'none',  # linear / recurrent modules take no positions
    },
    'selective_ssa': {
        'model.attention.mechanism': 'selective_ssa',
        'model.attention.kwargs.query_temperature': True,
        'model.attention.kwargs.position_temperature': True,
        'model.attention.kwargs.value_temperature': True,
        'model.attention.implementation': 'auto',
    },
    'sigmoid': {
        'model.attention.mechanism': 'sigmoid',
    },
    'slab_linear': {
        'model.attention.mechanism': 'slab_linear',
        'model.position': 'none',  # linear / recurrent modules take no positions
        'model.attention.kwargs.conv_width': 4,
    },
    'soft_nystrom': {
        'model.attention.mechanism': 'soft_nystrom',
        'model.position': 'none',  # linear / recurrent modules take no positions
        'model.attention.kwargs.num_landmarks': 16,
        'model.attention.kwargs.newton_iters': 20,
    },
    'softmax': {
        'model.attention.mechanism': 'softmax',
    },
    't5_relative': {
        'model.attention.mechanism': 't5_relative',
        'model.position': 'none',
        'model.attention.kwargs.num_buckets': 32,
        'model.attention.kwargs.max_distance': 128,
    },
    'tap_adl': {
        'model.attention.mechanism': 'tap_adl',
        'model.attention.implementation': 'xla',
        'model.attention.kwargs.num_scales': 4,
        'model.attention.kwargs.tap_temperature': 1.0,
        'model.attention.kwargs.adl_weight': 1.0,
        'model.attention.kwargs.adl_threshold': 2.0,
    },
    'vmoba': {
        'model.attention.mechanism': 'vmoba',
        'model.attention.kwargs.grid_shape': (-1, 4, 4),
        'model.attention.kwargs.block_shape': (1, 2, 2),
        'model.attention.kwargs.top_k': 2,
        'model.attention.kwargs.threshold': None,
        'model.attention.kwargs.global_selection': True,
    },
    'wide_deep': {
        'model.num_layers': 1,
        'model.num_heads': 4,
        'model.head_dim': 16,
    },
}

# ``python -m attnlab.train.compare`` runs these first (in this order, then the rest sorted):
# softmax and the mechanisms that Zoology (arXiv 2312.04927) compares on recall, then the
# sparse / routed ones; COMPARE_HIGHLIGHT are drawn in its curves plot (Zoology's set and
# catalogue II's best linear entry, slab_linear).
COMPARE_FIRST = (
    'softmax', 'sigmoid', 'linear_elu', 'retnet', 'gla', 'deltanet', 'gated_deltanet',
    'decon_approx', 'moba', 'aaren', 'slab_linear', 'inline', 'nalaformer', 'soft_nystrom',
    'vmoba', 'biformer', 'landmark', 'retrieval_topk', 'halo', 'axial', 'fit')
COMPARE_HIGHLIGHT = COMPARE_FIRST[:9] + ('slab_linear',)


def overrides_for(name: str) -> dict:
  """The dotted overrides that select catalogue entry ``name`` (ValueError if unknown)."""
  attnlab.get_mechanism(name)  # ValueError listing the registered names
  return dict(OVERRIDES.get(name, {"model.attention.mechanism": name}))


def _load_sibling(name: str):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"attnlab_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def apply_overrides(config, overrides: dict) -> None:
  """Set dotted keys (``"model.attention.kwargs.beta": 0.9``), creating kwargs entries."""
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
      if p not in node:
        raise ValueError(f"config override {dotted!r}: no key {p!r} under {node.keys()}")
      node = node[p]
    if leaf not in node and not dotted.startswith("model.attention.kwargs."):
      raise ValueError(f"config override {dotted!r}: unknown key {leaf!r}")
    with node.unlocked() if hasattr(node, "unlocked") else _nullcontext():
      node[leaf] = value


class _nullcontext:
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False


def get_config(arg: str = "softmax"):
  parts = [p.strip() for p in (arg or "softmax").split(",") if p.strip()]
  name, flags = parts[0], set(parts[1:])
  unknown = flags - {"local", "runlocal", "compare"}
  if unknown or len(flags) > 1:
    raise ValueError(f"configs/mechanisms.py: flags {sorted(flags)}; use one of ',local' "
                     "(tiny smoke test) or ',compare' (configs/mqar.py:compare)")
  overrides = overrides_for(name)
  base = "compare" if "compare" in flags else ("local" if flags else "")
  config = _load_sibling("mqar").get_config(base)
  apply_overrides(config, overrides)
  return config
