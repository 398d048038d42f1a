"""Neural model builders: each returns a compiled Keras model taking (28, 28, 1) images in [0, 1].

Keras is imported inside the builders so that importing the registry does not start TensorFlow.
The seed report's networks are reproduced layer for layer; `precision` selects Keras' dtype
policy ("float32" or "mixed_bfloat16"); the softmax output always stays in float32.
"""

from __future__ import annotations


def _policy(precision: str):
    import keras

    if precision not in ("float32", "mixed_bfloat16", "float64"):  # float64: gradient checks
        raise ValueError(f"precision must be float32 or mixed_bfloat16, got {precision!r}")
    return keras.mixed_precision.DTypePolicy(precision)


def _compile(model, optimizer, label_smoothing: float = 0.0):
    import keras

    loss = (keras.losses.SparseCategoricalCrossentropy()
            if not label_smoothing else _SmoothedSparseCE(label_smoothing))
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    return model


def _SmoothedSparseCE(label_smoothing: float):
    """Sparse labels with label smoothing (Keras' sparse loss has no smoothing argument)."""
    import keras
    from keras import ops

    class SmoothedSparseCE(keras.losses.Loss):
        def __init__(self, label_smoothing=0.1, name="smoothed_sparse_ce", **kw):
            super().__init__(name=name, **kw)
            self.label_smoothing = label_smoothing

        def call(self, y_true, y_pred):
            y_true = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"),
                                 ops.shape(y_pred)[-1])
            return keras.losses.categorical_crossentropy(
                y_true, y_pred, label_smoothing=self.label_smoothing)

        def get_config(self):
            return {**super().get_config(), "label_smoothing": self.label_smoothing}

    return SmoothedSparseCE(label_smoothing)


def _output(layers, classes: int = 10):
    return layers.Dense(classes, activation="softmax", dtype="float32", name="probabilities")


def _seed_network(name: str, layout: str, learning_rate: float, precision: str):
    """A seed-report network, layer for layer from `layout`: cNv / cNs a 3x3 ReLU convolution
    with N filters ('valid' / 'same' padding), p a 2x2 max pooling, f flatten, dN a ReLU dense
    layer of N units, xR dropout at rate R; then a float32 softmax, Adam at `learning_rate`."""
    import keras
    from keras import layers

    p = _policy(precision)
    make = {"c": lambda a: layers.Conv2D(int(a[:-1]), 3, activation="relu", dtype=p,
                                         padding={"v": "valid", "s": "same"}[a[-1]]),
            "p": lambda a: layers.MaxPooling2D(2, dtype=p),
            "f": lambda a: layers.Flatten(dtype=p),
            "d": lambda a: layers.Dense(int(a), activation="relu", dtype=p),
            "x": lambda a: layers.Dropout(float(a), dtype=p)}
    hidden = [make[token[0]](token[1:]) for token in layout.split()]
    model = keras.Sequential([keras.Input(shape=(28, 28, 1)), *hidden, _output(layers)],
                             name=name)
    return _compile(model, keras.optimizers.Adam(learning_rate=learning_rate))


def cnn_seed1(learning_rate: float = 1e-3, precision: str = "float32"):
    """The seed report's first CNN, layer for layer (693,962 parameters)."""
    return _seed_network("cnn_seed1", "c32v p f d128", learning_rate, precision)


def cnn_seed2(learning_rate: float = 1e-3, precision: str = "float32"):
    """The seed report's second CNN (381,066 parameters)."""
    return _seed_network("cnn_seed2", "c32v p c64s p f d128 x0.25 d256 x0.25 d128",
                         learning_rate, precision)


def cnn_seed3(learning_rate: float = 1e-3, precision: str = "float32"):
    """The seed report's third CNN (576,330 parameters)."""
    return _seed_network("cnn_seed3",
                         "c64v p c128s p c64s f d128 x0.25 d256 x0.5 d256 x0.25 d128 x0.10",
                         learning_rate, precision)


def parse_hidden(hidden: str | list[int] | tuple[int, ...]) -> list[int]:
    """'50x50' -> [50, 50]: topologies as categorical choices, like the seed's experiments."""
    units = [int(u) for u in hidden.lower().split("x")] if isinstance(hidden, str) else list(hidden)
    if not units or any(u < 1 for u in units):
        raise ValueError(f"hidden must be layer widths like '50x50', got {hidden!r}")
    return units


def mlp_seed(hidden: str = "50x50", activation: str = "tanh", learning_rate: float = 1.2e-2,
             momentum: float = 0.9, l2: float = 1e-4, precision: str = "float32"):
    """The seed report's MLP: 784 -> 50 tanh -> 50 tanh -> 10 softmax, SGD with momentum and
    L2 weight decay (42,310 parameters in the default topology)."""
    import keras
    from keras import layers

    if activation not in ("tanh", "sigmoid", "relu", "leaky_relu"):
        raise ValueError(f"activation must be tanh, sigmoid, relu or leaky_relu, got {activation!r}")
    p = _policy(precision)
    reg = keras.regularizers.L2(l2) if l2 else None
    stack = [keras.Input(shape=(28, 28, 1)), layers.Flatten(dtype=p)]
    for units in parse_hidden(hidden):
        stack.append(layers.Dense(units, activation=activation, kernel_regularizer=reg, dtype=p))
    stack.append(layers.Dense(10, activation="softmax", kernel_regularizer=reg,
                              dtype="float64" if precision == "float64" else "float32",
                              name="probabilities"))
    model = keras.Sequential(stack, name="mlp_seed")
    return _compile(model, keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum))


def parse_widths(widths: str | list[int] | tuple[int, ...]) -> list[int]:
    """'24-48-96-96' -> [24, 48, 96, 96]: one width per stage."""
    units = ([int(w) for w in widths.split("-")] if isinstance(widths, str) else list(widths))
    if not 1 <= len(units) <= 4 or any(w < 1 for w in units):
        raise ValueError(f"widths must be 1-4 stage widths like '24-48-96-96', got {widths!r}")
    return units


def augmentation(policy, shift: int = 2, erase: float = 0.0) -> list:
    """Random mirror images, shifts of up to `shift` pixels with reflected borders and, with
    probability `erase`, a random patch replaced by noise (Zhong et al.'s random erasing):
    Keras layers, active in fit() only."""
    from keras import layers

    stack = [layers.RandomFlip("horizontal", dtype=policy)]
    if shift:
        stack += [layers.RandomTranslation(shift / 28, shift / 28, fill_mode="reflect",
                                           interpolation="nearest", dtype=policy)]
    if erase:  # pixels are in [0, 1]; the patch is filled with clipped normal noise
        stack += [layers.RandomErasing(factor=(erase, erase), value_range=(0.0, 1.0),
                                       dtype=policy)]
    return stack


def warmup_cosine(learning_rate: float, warmup_epochs: float, steps_per_epoch: int,
                  epochs: int):
    """A linear warm-up over `warmup_epochs`, then cosine decay to 0 by the last step."""
    import keras

    total = max(1, steps_per_epoch * epochs)
    warmup = min(total - 1, int(round(warmup_epochs * steps_per_epoch)))
    return keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else learning_rate, decay_steps=total - warmup,
        warmup_target=learning_rate if warmup else None, warmup_steps=warmup)


def cnn_modern(widths: str = "24-48-96-96", learning_rate: float = 0.1, momentum: float = 0.9,
               weight_decay: float = 5e-4, label_smoothing: float = 0.0,
               bn_momentum: float = 0.6, warmup_epochs: float = 1.0, augment: bool = True,
               shift: int = 2, erase: float = 0.0, steps_per_epoch: int = 188,
               epochs: int = 12, precision: str = "float32", classes: int = 10):
    """A small network trained the way the fastest published recipes train (Keller Jordan's
    airbench for CIFAR-10), sized for two CPU cores. Four stages of conv -> max-pool -> BN ->
    GELU -> conv -> BN -> GELU (28 -> 14 -> 7 -> 4 -> 2 pixels), global max pooling and one
    dense layer; batch norm with momentum 0.6 so its statistics follow the weights within a
    few steps (Keras' 0.99 lags for hundreds); SGD with Nesterov momentum and weight decay on a
    linear warm-up then cosine decay; optional label smoothing (airbench's 0.2 measured worse
    here, see the YAML); random mirror images and shifts of up to `shift` pixels with reflected
    borders, and with probability `erase` a random patch (up to a third of the image) replaced
    by noise (Zhong et al.'s random erasing), in the model (active in fit() only). Weight
    averaging (EMA) is a fit setting (`ema` in the YAML), applied by the trainer.

    `steps_per_epoch` and `epochs` size the schedule; the trainer passes the real ones.
    `classes`: outputs (a specialist has one per class of its group).
    """
    import keras
    from keras import layers

    p = _policy(precision)
    if not 0.0 <= bn_momentum < 1.0:
        raise ValueError(f"bn_momentum must be in [0, 1), got {bn_momentum}")
    if not 0.0 <= erase <= 1.0:
        raise ValueError(f"erase is a probability in [0, 1], got {erase}")
    stack = [keras.Input(shape=(28, 28, 1)),
             *(augmentation(p, shift, erase) if augment else [])]

    def conv(filters: int):
        return [layers.Conv2D(filters, 3, padding="same", use_bias=False, dtype=p),
                layers.BatchNormalization(momentum=bn_momentum, dtype=p),
                layers.Activation("gelu", dtype=p)]

    for width in parse_widths(widths):
        first = conv(width)
        # conv, then pool, then normalise and activate (cheaper: BN on a quarter of the pixels)
        stack += [first[0], layers.MaxPooling2D(2, padding="same", dtype=p), *first[1:],
                  *conv(width)]
    if not 2 <= classes <= 10:
        raise ValueError(f"classes must be 2-10 outputs, got {classes}")
    stack += [layers.GlobalMaxPooling2D(dtype=p), _output(layers, classes)]
    model = keras.Sequential(stack, name="cnn_modern")
    schedule = warmup_cosine(learning_rate, warmup_epochs, steps_per_epoch, epochs)
    optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=momentum, nesterov=True,
                                     weight_decay=weight_decay)
    return _compile(model, optimizer, label_smoothing)


def cnn_resnet(widths: str = "32-64-128", learning_rate: float = 2e-3,
               weight_decay: float = 0.05, label_smoothing: float = 0.1,
               bn_momentum: float = 0.9, warmup_epochs: float = 1.0, augment: bool = True,
               shift: int = 2, erase: float = 0.0, steps_per_epoch: int = 188, epochs: int = 12,
               precision: str = "float32", classes: int = 10):
    """A small pre-activation ResNet (He et al., 2016), built to err differently from
    cnn_modern for the ensemble: a 3x3 stem and max pooling to 14 pixels, then one residual
    block per stage (BN -> ReLU -> conv, twice, plus the shortcut; stages after the first
    halve the resolution by stride, with a 1x1 projection), global *average* pooling (cnn_modern
    takes the maximum), ReLU instead of GELU, AdamW instead of SGD with Nesterov momentum, on
    a linear warm-up then cosine decay; the same random mirrors and shifts, optional random
    erasing. `steps_per_epoch` and `epochs` size the schedule; the trainer passes the real
    ones. `classes`: outputs."""
    import keras
    from keras import layers

    p = _policy(precision)
    if not 0.0 <= erase <= 1.0:
        raise ValueError(f"erase is a probability in [0, 1], got {erase}")
    if not 2 <= classes <= 10:
        raise ValueError(f"classes must be 2-10 outputs, got {classes}")
    if not 0.0 <= bn_momentum < 1.0:
        raise ValueError(f"bn_momentum must be in [0, 1), got {bn_momentum}")
    units = parse_widths(widths)

    def bn():
        return layers.BatchNormalization(momentum=bn_momentum, dtype=p)

    inputs = keras.Input(shape=(28, 28, 1))
    x = inputs
    for layer in augmentation(p, shift, erase) if augment else []:
        x = layer(x)
    x = layers.Conv2D(units[0], 3, padding="same", use_bias=False, dtype=p)(x)
    x = layers.MaxPooling2D(2, dtype=p)(x)
    for i, width in enumerate(units):
        stride = 1 if i == 0 else 2
        pre = layers.Activation("relu", dtype=p)(bn()(x))
        shortcut = x if stride == 1 and x.shape[-1] == width else layers.Conv2D(
            width, 1, strides=stride, use_bias=False, dtype=p)(pre)
        y = layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False,
                          dtype=p)(pre)
        y = layers.Activation("relu", dtype=p)(bn()(y))
        y = layers.Conv2D(width, 3, padding="same", use_bias=False, dtype=p)(y)
        x = layers.Add(dtype=p)([shortcut, y])
    x = layers.Activation("relu", dtype=p)(bn()(x))
    x = layers.GlobalAveragePooling2D(dtype=p)(x)
    model = keras.Model(inputs, _output(layers, classes)(x), name="cnn_resnet")
    schedule = warmup_cosine(learning_rate, warmup_epochs, steps_per_epoch, epochs)
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=weight_decay)
    return _compile(model, optimizer, label_smoothing)


def cnn_classic(learning_rate: float = 1e-3, steps_per_epoch: int = 375, epochs: int = 15,
                precision: str = "float32", classes: int = 10):
    """conv(32) -> pool -> conv(64) -> pool -> dropout -> conv(128) -> dropout -> flatten ->
    dense(256) -> dropout(0.5), batch norm after each, ReLU; Adam on a cosine decay."""
    import keras
    from keras import layers

    p = _policy(precision)

    def block(filters):
        return [layers.Conv2D(filters, 3, padding="same", use_bias=False, dtype=p),
                layers.BatchNormalization(dtype=p), layers.ReLU(dtype=p)]

    stack = [keras.Input(shape=(28, 28, 1)), layers.RandomFlip("horizontal", dtype=p),
             *block(32), layers.MaxPooling2D(2, dtype=p), *block(64),
             layers.MaxPooling2D(2, dtype=p), layers.Dropout(0.25, dtype=p), *block(128),
             layers.Dropout(0.25, dtype=p), layers.Flatten(dtype=p),
             layers.Dense(256, use_bias=False, dtype=p), layers.BatchNormalization(dtype=p),
             layers.ReLU(dtype=p), layers.Dropout(0.5, dtype=p), _output(layers, classes)]
    model = keras.Sequential(stack, name="cnn_classic")
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps_per_epoch * epochs)
    return _compile(model, keras.optimizers.Adam(learning_rate=schedule))


def with_mirror(model):
    """Mirror test-time augmentation inside the network: the mean of `model` on the images and
    on their left-right mirror images (apparel is left-right symmetric). The mirror is a frozen
    Dense layer whose kernel reverses the 28 columns (exact in float32: one product by 1.0
    per pixel), so the saved model is plain Keras and loads anywhere without study's code."""
    import keras
    import numpy as np
    from keras import layers

    height, width, channels = model.input_shape[1:]
    if channels != 1:
        raise ValueError(f"mirror TTA expects one channel, got {channels}")
    reverse = np.eye(width, dtype="float32")[::-1]
    inputs = keras.Input(shape=(height, width, channels), name="images")
    rows = layers.Reshape((height, width), name="rows")(inputs)
    mirrored = layers.Dense(width, use_bias=False, trainable=False, name="mirror",
                            kernel_initializer=keras.initializers.Constant(reverse),
                            dtype="float32")(rows)
    mirrored = layers.Reshape((height, width, channels), name="mirrored")(mirrored)
    outputs = layers.Average(dtype="float32", name="probabilities")([model(inputs),
                                                                     model(mirrored)])
    return keras.Model(inputs, outputs, name=f"{model.name}_mirror_tta")


def fold_specialist(generalist, specialist, group: list[int] | tuple[int, ...]):
    """A generalist with a specialist for `group` folded in (Hinton et al.'s specialists):
    p(c) = p_generalist(group) * p_specialist(c | group) for c in the group, the generalist's
    p(c) elsewhere. `specialist` has one output per class of `group`, in that order. Made of
    frozen 0/1 Dense layers (exact in float32), so the saved model is plain Keras, like the
    mirror TTA: it loads anywhere without study's code."""
    import keras
    import numpy as np
    from keras import layers

    n, k = (int(m.outputs[0].shape[-1]) for m in (generalist, specialist))
    group = [int(c) for c in group]
    if k != len(group) or len(set(group)) != k or not all(0 <= c < n for c in group):
        raise ValueError(f"a specialist with {k} outputs cannot share out classes {group} "
                         f"of {n}")
    inside = np.zeros((n, n), dtype="float32")  # each group column receives the group's mass
    inside[np.ix_(group, group)] = 1.0
    outside = np.diag([0.0 if c in group else 1.0 for c in range(n)]).astype("float32")
    scatter = np.zeros((k, n), dtype="float32")  # within-group probabilities to their columns
    scatter[np.arange(k), group] = 1.0

    def frozen(kernel, name):
        return layers.Dense(kernel.shape[1], use_bias=False, trainable=False, name=name,
                            kernel_initializer=keras.initializers.Constant(kernel),
                            dtype="float32")

    def renamed(model, name):  # two nested models may not share a name
        return keras.Model(model.inputs[0], model.outputs[0], name=name)

    inputs = keras.Input(shape=generalist.input_shape[1:], name="images")
    general = renamed(generalist, "generalist")(inputs)
    within = frozen(scatter, "within_group")(renamed(specialist, "specialist")(inputs))
    shared = layers.Multiply(dtype="float32", name="group_shared_out")(
        [frozen(inside, "group_mass")(general), within])
    outputs = layers.Add(dtype="float32", name="probabilities")(
        [frozen(outside, "other_classes")(general), shared])
    return keras.Model(inputs, outputs, name="generalist_with_specialist")
