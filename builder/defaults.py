"""The builder's defaults, each in one place: argparse, the build spec and the jobs all read them here
(devices, precisions and compile modes are kept with their meaning in ``builder.device``)."""

SHARD_UNITS = 256     # units per shard file
TOP_K = 16            # dataset images kept per unit
BATCH_SIZE = 64       # images per batch of the probe and the analyses
RELATED_K = 8         # related units kept per unit and scope
SKETCH_DIMS = 1024    # dimensions of the related-units sketch
SEED = 0              # the run seed every unit's seed is derived from
CHECKPOINT_SECONDS = 300   # a long pass (probe, netdissect) saves its state this often, to resume after a kill
LABEL_K = 5           # concepts kept per unit and label source
VOCABULARY = 20000    # open-vocabulary labels: the most frequent English words taken from wordfreq

DEMO_IMAGES = 2000    # the demo's dataset: the demo models' held-out set,
DEMO_SEED = 1         # generated with this seed (builder.demo.shapes)
DEMO_CONCEPT_IMAGES = 500   # the first of them also in the demo's concept dataset (netdissect's two passes)
