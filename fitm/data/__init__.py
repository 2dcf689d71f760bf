"""Dataset adapters: each gives the normal class's training images and the labelled test set as uint8
NHWC arrays (3 channels), the format every stage reads."""
