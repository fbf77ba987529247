"""Runtime of a TensorFlow job: thread pools, precision, devices and the distribution strategy.

Used by every script that runs a model (training, features, evaluation, ``cxr-predict``), so
it comes first in the data flow and imports no other ``cxr`` module. Imports TensorFlow only
inside its functions: call :func:`configure_threads` before the first TensorFlow op, then
:func:`apply_precision` (config ``runtime.precision``) before the first model is built or loaded.

Precision: ``float32`` (default), Keras' mixed policies ``mixed_bfloat16`` (CPUs with native
bfloat16) and ``mixed_float16`` (GPUs with tensor cores), or ``auto``, which picks one of the
three from the hardware (:func:`resolve_precision`). Under a mixed policy layers compute in
16 bits and keep float32 variables; the classifier's softmax output, the loss and the metrics
stay float32 (:func:`cxr.model.build_model`), and saved models are float32 files
(:func:`cxr.io.save_keras`).

Devices: :func:`make_strategy` trains on every GPU the job sees (``MirroredStrategy`` when
there are several, the default strategy with one or none); ``batch_size`` is the global batch,
split evenly over the replicas (:func:`replica_batch_size`).

References
----------
- ``tf.config.threading``: https://www.tensorflow.org/api_docs/python/tf/config/threading
- Mixed precision: https://keras.io/api/mixed_precision/policy/ and
  https://www.tensorflow.org/guide/mixed_precision (tensor cores: compute capability >= 7.0)
- bfloat16 CPU flags: Intel, "Intel Architecture Instruction Set Extensions Programming
  Reference" (AVX512_BF16, AMX-BF16); Linux arch/x86/include/asm/cpufeatures.h (flag names)
- Distributed training with Keras 3 on TensorFlow:
  https://keras.io/guides/distributed_training_with_tensorflow/ and
  https://www.tensorflow.org/api_docs/python/tf/distribute/MirroredStrategy
"""

from __future__ import annotations


def configure_threads(threads: int) -> None:
    """Size TensorFlow's thread pools (intra- and inter-op) to ``threads``.

    Call before any TensorFlow op runs (TF fixes its pools on first use). Keras picks up the
    same runtime. Source: ``tf.config.threading`` docs.

    Raises
    ------
    ValueError
        If ``threads < 1``.
    RuntimeError
        If TensorFlow has already been initialised (from TensorFlow itself).
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


#: Values of config ``runtime.precision``: the Keras dtype-policy names, and ``auto``.
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")

#: /proc/cpuinfo flags of x86 CPUs that compute bfloat16 natively (oneDNN uses them); without
#: them TensorFlow emulates bfloat16 on the CPU, slower than float32. Linux's names
#: (arch/x86/include/asm/cpufeatures.h): AVX512_BF16 (Intel Cooper Lake, Sapphire Rapids;
#: AMD Zen 4) and AMX-BF16 (Intel Sapphire Rapids).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")

#: Lowest CUDA compute capability with tensor cores (Volta, 7.0): where ``mixed_float16``
#: pays (TensorFlow mixed-precision guide).
TENSOR_CORE_CAPABILITY = (7, 0)


def cpu_flags(cpuinfo="/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags the kernel lists (the ``flags`` lines of ``/proc/cpuinfo``).

    Parameters
    ----------
    cpuinfo : path of a ``/proc/cpuinfo``-format file (a fake one in tests).

    Returns
    -------
    frozenset of str, the union over all processors; empty when the file is missing or has no
    ``flags`` line (not Linux, or not x86: then ``auto`` never picks ``mixed_bfloat16``).
    """
    try:
        with open(cpuinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return frozenset(flags)


def gpu_capabilities() -> list[tuple[int, int]]:
    """CUDA compute capability ``(major, minor)`` of every GPU TensorFlow sees; ``[]`` with
    none. A GPU whose capability TensorFlow does not report counts as ``(0, 0)``.
    Source: ``tf.config.experimental.get_device_details``."""
    import tensorflow as tf

    out = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        out.append(tuple(details.get("compute_capability", (0, 0))))
    return out


def resolve_precision(precision: str, flags=None, gpus=None) -> tuple[str, str]:
    """The Keras dtype policy that ``precision`` means here, and why.

    ``auto``: ``mixed_float16`` when there are GPUs and all have tensor cores (compute
    capability >= :data:`TENSOR_CORE_CAPABILITY`); ``float32`` when there are GPUs without;
    with no GPU, ``mixed_bfloat16`` when the CPU flags include one of :data:`BF16_CPU_FLAGS`,
    else ``float32``. Any other value is returned as it is.

    Parameters
    ----------
    precision : one of :data:`PRECISIONS`.
    flags : CPU flags (:func:`cpu_flags` when None).
    gpus : compute capabilities of the GPUs, ``[(major, minor), ...]`` (:func:`gpu_capabilities`
        when None; ``[]`` for none).

    Returns
    -------
    ``(policy, reason)``: a Keras dtype-policy name (not ``auto``) and a short phrase for the log.

    Raises
    ------
    ValueError
        If ``precision`` is not one of :data:`PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision, "as configured"
    gpus = gpu_capabilities() if gpus is None else [tuple(g) for g in gpus]
    if gpus:
        shown = ", ".join(f"{major}.{minor}" for major, minor in gpus)
        if all(g >= TENSOR_CORE_CAPABILITY for g in gpus):
            return "mixed_float16", f"auto: GPU compute capability {shown} (tensor cores)"
        return "float32", f"auto: GPU compute capability {shown}, no tensor cores on all"
    flags = cpu_flags() if flags is None else frozenset(flags)
    native = [flag for flag in BF16_CPU_FLAGS if flag in flags]
    if native:
        return "mixed_bfloat16", f"auto: no GPU, CPU has native bfloat16 ({', '.join(native)})"
    return "float32", "auto: no GPU, CPU without native bfloat16"


#: ``argparse`` keywords of ``--precision`` (config ``runtime.precision``) in every script that
#: runs a network, and ``cxr-predict``: ``p.add_argument("--precision", **PRECISION_OPTION)``.
PRECISION_OPTION = dict(
    choices=PRECISIONS,
    default="float32",
    help="runtime.precision: float32, mixed_bfloat16 (CPUs with native bfloat16),"
    " mixed_float16 (GPUs with tensor cores) or auto (chosen by the hardware)",
)


def apply_precision(precision: str, flags=None, gpus=None, stream=None) -> str:
    """Set Keras' global dtype policy from config ``runtime.precision`` and log the choice.

    Every script that builds or loads a network calls it once, after
    :func:`configure_threads`; models built or loaded (:func:`cxr.model.load_model`) afterwards
    compute in that policy. Prints one line, e.g.
    ``precision: mixed_bfloat16 (auto: no GPU, CPU has native bfloat16 (avx512_bf16))``.

    Parameters
    ----------
    precision, flags, gpus : see :func:`resolve_precision`.
    stream : text file the line goes to (None: standard output; ``cxr-predict``, whose
        standard output is its result table, passes ``sys.stderr``).

    Returns
    -------
    str, the policy set (recorded with the model: :func:`cxr.io.save_keras`).

    Raises
    ------
    ValueError
        If ``precision`` is not one of :data:`PRECISIONS`.
    """
    import keras

    policy, reason = resolve_precision(precision, flags, gpus)
    keras.config.set_dtype_policy(policy)
    print(f"precision: {policy} ({reason})", file=stream, flush=True)
    return policy


def make_strategy(devices="auto"):
    """The ``tf.distribute`` strategy to build and train the model under.

    Parameters
    ----------
    devices : ``"auto"`` or sequence of str
        ``"auto"``: every GPU TensorFlow sees (under SLURM, the ones the job was given:
        ``CUDA_VISIBLE_DEVICES``); ``MirroredStrategy`` over them when there are two or more,
        else the default strategy (TensorFlow places ops on the one GPU, or the CPU).
        A sequence names the logical devices (``"/gpu:0"``, ``"/cpu:1"``, ...): two or more
        give ``MirroredStrategy`` over exactly those, one gives ``OneDeviceStrategy``.

    Returns
    -------
    tf.distribute.Strategy
        Its ``num_replicas_in_sync`` is the number of devices the global batch is split over.

    Raises
    ------
    ValueError
        If ``devices`` is empty, names a device twice, or names a device TensorFlow does not
        have (``tf.config.list_logical_devices``).
    """
    import tensorflow as tf

    if isinstance(devices, str):
        if devices != "auto":
            raise ValueError(f"devices must be 'auto' or a list of device names, got {devices!r}")
        gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
        if len(gpus) < 2:
            return tf.distribute.get_strategy()
        return tf.distribute.MirroredStrategy(gpus)
    names = [tf.DeviceSpec.from_string(d).to_string() for d in devices]
    known = {
        tf.DeviceSpec.from_string(d.name).to_string() for d in tf.config.list_logical_devices()
    }
    if not names or len(set(names)) != len(names):
        raise ValueError(f"devices must be distinct device names, got {list(devices)}")
    unknown = [d for d in names if d not in known]
    if unknown:
        raise ValueError(f"no such devices: {unknown}; TensorFlow has {sorted(known)}")
    if len(names) == 1:
        return tf.distribute.OneDeviceStrategy(names[0])
    return tf.distribute.MirroredStrategy(names)


def replica_batch_size(batch_size: int, replicas: int, sizes: dict[str, int]) -> int:
    """Images per replica in each full batch: the global ``batch_size`` split evenly.

    Parameters
    ----------
    batch_size : int >= 1, the global batch (``train.batch_size``): images per optimiser step
        over all replicas together.
    replicas : int >= 1, ``strategy.num_replicas_in_sync``.
    sizes : ``{split name: number of images}`` of the data fed in batches of ``batch_size``.

    Returns
    -------
    int, ``batch_size // replicas``.

    Raises
    ------
    ValueError
        If ``batch_size`` is not a multiple of ``replicas``, or a split's first batch
        (``min(batch_size, n)``) is not: TensorFlow 2.21 / Keras 3.15 fail on a first
        distributed batch that does not split evenly (``AddN`` shape error); a later, smaller
        last batch may split unevenly.
    """
    if replicas < 1 or batch_size < 1:
        raise ValueError(f"need batch_size and replicas >= 1, got {batch_size}, {replicas}")
    if batch_size % replicas:
        raise ValueError(f"batch_size {batch_size} does not split evenly over {replicas} replicas")
    for name, n in sizes.items():
        if min(batch_size, n) % replicas:
            raise ValueError(
                f"{name}: {n} images (< batch_size {batch_size}) do not split evenly over"
                f" {replicas} replicas"
            )
    return batch_size // replicas


def describe_strategy(strategy) -> str:
    """One line naming the strategy and its devices, for the training log."""
    import tensorflow as tf

    if not tf.distribute.has_strategy() and strategy is tf.distribute.get_strategy():
        gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
        return f"default strategy, 1 replica on {gpus[0] if gpus else 'the CPU'}"
    devices = ", ".join(strategy.extended.worker_devices)
    return f"{type(strategy).__name__}, {strategy.num_replicas_in_sync} replica(s): {devices}"
