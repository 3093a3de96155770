"""The seeds' way, as a yardstick: a plain synchronous Flask app, one ``model.predict`` per upload.

``python -m bench.seeds_app PORT [MODEL]`` serves ``POST /predict`` (multipart
field ``file``) on 127.0.0.1:PORT with Werkzeug's server, one request at a
time: it decodes the image, preprocesses it exactly as the service does, calls
``model.predict`` on a batch of one and answers the label and probabilities.
This is what hobby projects deploy; bench/paths.py compares the service with it.
"""

from __future__ import annotations

import io
import os
import sys

import numpy as np
from flask import Flask, jsonify, request
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def create_app(model_name: str) -> Flask:
    """Load the model once, then predict one image per request."""
    from config import get_settings
    from models.preprocessing import preprocess
    from models.registry import Registry
    from models.serving import load_model

    card = Registry(get_settings().models_dirs).get(model_name)
    model = load_model(card)
    app = Flask(__name__)

    @app.post("/predict")
    def predict():  # type: ignore[no-untyped-def]
        image = np.asarray(Image.open(io.BytesIO(request.files["file"].read())).convert("L"))
        tensor = preprocess(image, card.input)[np.newaxis]
        probabilities = model.predict(tensor, verbose=0)[0]
        label = card.classes[int(np.argmax(probabilities))]
        return jsonify(label=label, probabilities=[float(p) for p in probabilities])

    return app


def main() -> None:
    from werkzeug.serving import make_server

    port = int(sys.argv[1])
    model = sys.argv[2] if len(sys.argv) > 2 else "lungct-cnn6"
    server = make_server("127.0.0.1", port, create_app(model), threaded=False)
    print(f"seeds app on http://127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
