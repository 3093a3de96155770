"""``python -m models.import MODEL.keras --name N --classes a,b,c``: see models/import_model.py.

``import`` is a Python keyword, so this module can be run with ``-m`` but not imported by
name; the code lives in :mod:`models.import_model`.
"""

from models.import_model import main

if __name__ == "__main__":
    main()
