"""The builder's defaults, each in one place: argparse, the build spec and the jobs all read them here
(devices, precisions and compile modes live with their meaning in ``builder.device``)."""

SHARD_UNITS = 256     # units per shard file
TOP_K = 16            # dataset images kept per unit
BATCH_SIZE = 64       # images per batch of the probe and the analyses
RELATED_K = 8         # related units kept per unit and scope
SKETCH_DIMS = 1024    # dimensions of the related-units sketch
SEED = 0              # the run seed every unit's seed is derived from

DEMO_IMAGES = 2000    # the demo's dataset: the demo models' held-out set,
DEMO_SEED = 1         # generated with this seed (builder.demo.shapes)
