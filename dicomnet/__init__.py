"""The DICOM node: studies in over DICOM (C-STORE, STOW-RS), results back as DICOM SR.

``python -m dicomnet`` runs the listener and the background loops (see
:mod:`dicomnet.service`); docs/dicom.md tells a PACS administrator how to connect.
Nothing here imports TensorFlow: jobs run in the ordinary workers.
"""
