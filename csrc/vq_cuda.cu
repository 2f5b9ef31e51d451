// CUDA nearest-codebook search (to be written).
