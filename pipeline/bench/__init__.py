"""Benchmarks: the pipeline against the seed notebook's way, side by side in one run, each figure printed.

    python -m pipeline.bench                          digits: the notebook's DataLoader epoch vs train's (digits)
    python -m pipeline.bench --images 2000 ...        image files: per-item decoding vs the decode-once cache (images)
    python -m pipeline.bench --table 100000 ...       tables: the MLP's DataLoader loop vs device-resident rows, plain
                                                      5-fold LightGBM vs the gbm learner (tables)
    python -m pipeline.bench --frames N | --speakers N   HW2 / HW4: per-item Datasets vs the packed path (sequences)
    python -m pipeline.bench.long_utterance           peak memory of one long utterance in evaluation batches
    bash bench/gpu.sh OUT                             every GPU figure in one run (pipeline.bench.gpu)
"""
