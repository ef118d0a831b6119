"""The baseline service: a minimal Flask app on waitress (8 threads) answering GET /api/lamps with 8 lamps (and POST /api/stop-all).

Run: python -m bench.minimal_app PORT. Prints "serving" once it listens.
"""

from __future__ import annotations

import sys


def main() -> int:
    import logging

    from flask import Flask, jsonify
    from waitress import create_server

    app = Flask(__name__)
    lamps = [
        {
            "id": f"room{n}",
            "name": f"Room {n}",
            "state": "off",
            "relay_on": False,
            "remaining_s": None,
            "session_id": None,
            "max_minutes": 30,
            "presets": [10, 15, 20, 30],
        }
        for n in range(8)
    ]

    @app.get("/api/lamps")
    def all_lamps():
        return jsonify(lamps=lamps)

    @app.post("/api/stop-all")
    def stop_all():  # the floor for a Stop on this server: no controller, no record
        return jsonify(lamps=lamps)

    logging.getLogger("waitress").setLevel(logging.ERROR)  # "Task queue depth" lines under load
    server = create_server(app, host="127.0.0.1", port=int(sys.argv[1]), threads=8)
    print("serving", flush=True)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
