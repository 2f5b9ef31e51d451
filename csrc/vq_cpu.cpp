// CPU nearest-codebook search (to be written).
