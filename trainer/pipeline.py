"""The input pipeline of ``trainer fit``: a ``tf.data`` stream that shuffles, augments online with
albumentations in parallel workers, batches and prefetches (used by both training loops)."""

from __future__ import annotations

from trainer.augment import augment_pair, online_pipeline
from trainer.config import TrainConfig


def make_dataset(
    images,
    labels,
    batch_size: int,
    *,
    training: bool,
    cfg: TrainConfig,
    shard: tuple[int, int] | None = None,
):
    """``tf.data`` pipeline: shuffle, online albumentations in parallel (training), batch, prefetch.

    Args:
        shard: ``(pipelines, index)``: keep every ``pipelines``-th frame of the (identically
            seeded) shuffle from ``index`` on, before augmenting, so that the workers of a
            multi-worker run see disjoint frames and augment only their own.
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if training:
        ds = ds.shuffle(len(images), seed=cfg.seed, reshuffle_each_iteration=True)
        if shard is not None:
            ds = ds.shard(*shard)
        if cfg.steps_per_epoch:
            # fit keeps one iterator across epochs when steps_per_epoch is set; without repeat an
            # epoch that meets the end of a pass is cut short ("Your input ran out of data")
            ds = ds.repeat()
        pipeline = online_pipeline(cfg.data.online_geometric, cfg.data.online_pixel, seed=cfg.seed)
        if pipeline is not None:
            h, w = images.shape[1:3]

            def augment(image, label):
                image, label = tf.numpy_function(
                    lambda i, m: augment_pair(pipeline, i, m),
                    [image, label],
                    [tf.float32, tf.uint8],
                )
                return tf.ensure_shape(image, (h, w)), tf.ensure_shape(label, (h, w))

            ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.map(
        lambda i, m: (i[..., None], tf.cast(m, tf.int32)), num_parallel_calls=tf.data.AUTOTUNE
    )
    ds = ds.batch(batch_size, drop_remainder=training)
    options = tf.data.Options()
    policy = tf.data.experimental.AutoShardPolicy
    options.experimental_distribute.auto_shard_policy = policy.OFF if shard else policy.DATA
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
