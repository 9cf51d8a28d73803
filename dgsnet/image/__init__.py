"""Images, torch-free (numpy + Pillow): the one implementation that training, evaluation, export
and the ONNX runtime share.

    decode.py      files -> HxWx3 uint8 RGB: bomb limit, pixel budget, EXIF rotation, alpha on white
    preprocess.py  patch selection (FFT entropy, 24 lowest + 25 highest 32x32 patches) and normalisation
"""
