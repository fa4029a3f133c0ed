"""Data layer: study records, dataset loaders (IU X-ray, MIMIC-CXR-JPG, CSV manifest),
patient- or study-level splits, safe image decoding and the offline demo dataset."""
