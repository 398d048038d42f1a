"""Neural model builders: each returns a compiled Keras model taking (28, 28, 1) images in [0, 1].

Keras is imported inside the builders so that importing the registry does not start TensorFlow.
"""

from __future__ import annotations


def cnn_seed1(learning_rate: float = 1e-3):
    """The seed report's first CNN, layer for layer (693,962 parameters)."""
    import keras
    from keras import layers

    model = keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            layers.Conv2D(32, 3, strides=1, padding="valid", activation="relu"),
            layers.MaxPooling2D(pool_size=2),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(10, activation="softmax"),
        ],
        name="cnn_seed1",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model
