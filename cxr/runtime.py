"""Runtime of a TensorFlow job: thread pools, devices and the distribution strategy.

Used by every script that runs a model (training, features, evaluation, ``cxr-predict``), so
it comes first in the data flow and imports no other ``cxr`` module. Imports TensorFlow only
inside its functions: call :func:`configure_threads` before the first TensorFlow op.

Devices: :func:`make_strategy` trains on every GPU the job sees (``MirroredStrategy`` when
there are several, the default strategy with one or none); ``batch_size`` is the global batch,
split evenly over the replicas (:func:`replica_batch_size`).

References
----------
- ``tf.config.threading``: https://www.tensorflow.org/api_docs/python/tf/config/threading
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
