"""Data layer: study records, dataset loaders (IU X-ray, MIMIC-CXR-JPG, CSV manifest),
patient-level splits, safe image decoding and the offline demo dataset."""
