"""The config keys: one row (dotted name, default, type, comment) per key of the classification and the
search configs; ``config.py`` builds the CLASSIFICATION and SEARCH schemas from these tables."""

from __future__ import annotations

__all__ = ["CLASSIFICATION_KEYS", "SEARCH_KEYS"]

# (name, default, type, comment); a default of None means "null: decided elsewhere" (nullable).
CLASSIFICATION_KEYS = [
    ("model.arch", "nasnet_a_cifar", str, "registered nasnet_core model (nasnet_core.list_models())"),
    ("model.genotype", None, str, "genotype: registered name, text form or a JSON file from the "
                                 "search (null: the arch's, NASNet-A)"),
    ("model.N", None, int, "normal cells per stage (null: the arch's)"),
    ("model.F", None, int, "penultimate width, 24 x num_conv_filters for NASNet-A (null: the arch's)"),
    ("model.stem", None, str, "imagenet | cifar (null: the arch's)"),
    ("model.aux_head", True, bool, "auxiliary classifier after the 2nd stage (training only)"),
    ("model.drop_path_keep_prob", None, float, "ScheduledDropPath final keep prob of the last cell "
                                              "(null: the arch's; 1.0 = off)"),
    ("model.dropout", None, float, "dropout before the classifier (null: the arch's)"),
    ("model.norm", "BN", str, "BN | SyncBN | FrozenBN | GN"),
    ("model.pad_mode", "tf", str, "tf | timm (stride-2 padding semantics)"),
    ("model.grad_checkpointing", False, bool, "recompute each cell's activations in backward (less memory, "
                                             "more compute; same drop masks, BN statistics once)"),
    ("data.dataset", "cifar10", str, "cifar10 | imagenet | fashion_mnist"),
    ("data.path", "", str, "dataset root (CIFAR python batches, ImageNet train/ val/ folders, "
                           "Fashion-MNIST IDX files); --data overrides it"),
    ("data.image_size", None, int, "training and eval crop size (null: the dataset's native size, "
                                   "or the arch's image_size for imagenet)"),
    ("data.crop_pct", 0.875, float, "imagenet eval: fraction of each side kept (TF-slim 0.875)"),
    ("data.eval_crop", "tf", str, "imagenet eval: tf (TF-slim: central crop_pct, resized to image_size) | "
                                  "torchvision (shorter side to image_size / crop_pct, centre crop)"),
    ("data.train_crop", "tf", str, "imagenet train: tf (TF-slim distorted bounding-box crop) | "
                                   "torchvision (random-resized crop, min_scale)"),
    ("data.area_range", [0.05, 1.0], list, "imagenet train, tf crop: area fraction range (TF-slim 0.05-1.0)"),
    ("data.aspect_range", [0.75, 1.33], list, "imagenet train, tf crop: width / height, uniform (TF-slim)"),
    ("data.min_object_covered", 0.1, float, "imagenet train, tf crop: least fraction of the image (TF-slim)"),
    ("data.min_scale", 0.08, float, "imagenet train, torchvision crop: smallest area fraction"),
    ("data.color_distort", "fast", str, "imagenet train: fast (TF-slim brightness, saturation) | none"),
    ("data.pad", 4, int, "cifar10 / fashion_mnist train: zero-pad then random crop back (0 = off)"),
    ("data.hflip", True, bool, "random horizontal flips for training"),
    ("data.cutout", 0, int, "cutout square side in px (0 = off; 16 usual on CIFAR-10, the paper gives none)"),
    ("data.mean", None, list, "per-channel normalisation mean (null: the dataset's default)"),
    ("data.std", None, list, "per-channel normalisation std (null: the dataset's default)"),
    ("data.train_limit", 0, int, "use only the first K training examples (0 = all); for smoke runs"),
    ("data.val_limit", 0, int, "use only the first K validation examples (0 = all)"),
    ("data.workers", 4, int, "data-loader worker processes per training process"),
    ("data.pin_memory", True, bool, "pinned host memory for faster copies to the GPU"),
    ("solver.epochs", 600, int, "training epochs"),
    ("solver.batch_size", 32, int, "images per step per process (global batch = this x world size)"),
    ("solver.optimizer", "sgd", str, "sgd (momentum) | rmsprop (TF semantics)"),
    ("solver.lr", 0.025, float, "peak learning rate (at the global batch solver.global_batch)"),
    ("solver.global_batch", 0, int, "global batch (batch_size x processes) solver.lr is stated for: a run "
                                    "with another global batch scales lr linearly (0 = never scale)"),
    ("solver.momentum", 0.9, float, "SGD / RMSProp momentum"),
    ("solver.nesterov", False, bool, "Nesterov momentum for SGD"),
    ("solver.rmsprop_decay", 0.9, float, "RMSProp decay of the squared-gradient average"),
    ("solver.rmsprop_eps", 1.0, float, "RMSProp epsilon, inside the square root as in TensorFlow"),
    ("solver.weight_decay", 5e-4, float, "L2 on conv / FC weights (TF-slim regularises weights only)"),
    ("solver.schedule", "cosine", str, "cosine | exponential | constant (per step)"),
    ("solver.warmup_epochs", 0.0, float, "linear warmup from lr/W to lr over this many epochs"),
    ("solver.decay_rate", 0.97, float, "exponential schedule: multiply lr by this ..."),
    ("solver.decay_epochs", 2.4, float, "... every this many epochs"),
    ("solver.staircase", True, bool, "exponential schedule: decay in steps (TF staircase, true) "
                                     "or smoothly (false)"),
    ("solver.min_lr", 0.0, float, "cosine schedule: final learning rate"),
    ("solver.label_smoothing", 0.0, float, "target = (1 - e) one_hot + e / K"),
    ("solver.aux_weight", 0.4, float, "loss weight of the auxiliary head"),
    ("solver.grad_clip", 5.0, float, "clip the global norm of all gradients, aux head's too (0 = off)"),
    ("solver.ema_decay", 0.0, float, "parameter EMA decay (0 = off); when on, evaluation and the "
                                   "exported backbone use the EMA weights"),
    ("train.output_dir", "runs/classification", str, "checkpoints, TensorBoard events, resolved config"),
    ("train.seed", 0, int, "seed of sampling order, augmentation, init, dropout and drop-path"),
    ("train.deterministic", False, bool, "deterministic kernels (torch.use_deterministic_algorithms)"),
    ("train.device", "auto", str, "auto | cpu | cuda"),
    ("train.amp", "auto", str, "bf16 autocast: auto (on for CUDA with bf16) | on (CPU too) | off"),
    ("train.channels_last", "auto", str, "channels_last memory format: auto (on for CUDA) | on | off"),
    ("train.eval_every", 1, int, "evaluate every this many epochs (and always at the end)"),
    ("train.keep_every", 0, int, "also keep epoch_XXXX.pth every this many epochs (0 = only last.pth)"),
    ("train.log_every", 10, int, "write TensorBoard training scalars every this many steps"),
    ("train.threads", 0, int, "CPU threads for torch (0 = torch's default)"),
]

SEARCH_KEYS = [
    ("search.strategy", "ppo", str, "ppo | reinforce | random | evolution (nasnet_core.search.STRATEGIES)"),
    ("search.strategy_hparams", {}, dict, "overrides of the strategy's HPARAMS (e.g. lr, batch_size)"),
    ("search.num_children", 48, int, "children to sample in all; failed children count too"),
    ("search.seed", 0, int, "strategy seed (controller init and sampling)"),
    ("search.failure_reward", None, float, "reward told to the strategy for a failed or timed-out child "
                                           "(null: such a child is not told)"),
    ("search.max_in_flight", 0, int, "children queued or running at once; 0 = 1 in-process, "
                                     "2 x slots on Ray"),
    ("space.variant", "A", str, "paper variant A | B | C (nasnet_core.search.SPACE_VARIANTS)"),
    ("space.num_blocks", None, int, "B, blocks per cell (null: the variant's)"),
    ("space.ops", None, list, "list of op names (null: the paper's 13 ops)"),
    ("space.combiners", None, list, "list of combiners (null: the variant's)"),
    ("space.output", None, str, "unused | all (null: the variant's)"),
    ("space.num_inputs", None, int, "cell inputs: 2 (NASNet-A/C) | 4 (NASNet-B) (null: the variant's)"),
    ("executor.backend", "inprocess", str, "inprocess (one child at a time) | ray"),
    ("executor.address", None, str, "Ray cluster address, e.g. auto or ray://host:10001 (null: local)"),
    ("executor.num_cpus", None, int, "CPUs for a local Ray instance (null: all)"),
    ("executor.cpus_per_child", 1, int, "Ray CPUs reserved per child"),
    ("executor.gpus_per_child", None, float, "Ray GPUs per child (null: 1 when the cluster has GPUs, "
                                             "else 0)"),
    ("executor.max_retries", 3, int, "Ray re-runs of a child whose worker process died"),
    ("executor.child_timeout", None, float, "seconds a child may run; past it the child is stopped and "
                                            "recorded timeout (null: no limit)"),
    ("reward.name", "child", str, "child (train a child network) | supernet (score its path in a trained "
                                  "weight-sharing supernet) | synthetic (tests, demos)"),
    ("reward.child.dataset", "fashion_mnist", str, "fashion_mnist (IDX files, .gz or not) | cifar10 "
                                           "(python pickles)"),
    ("reward.child.data_dir", "/usr/share/datasets/fashion-mnist", str, "folder holding the dataset's files"),
    ("reward.child.val_size", 5000, int, "held-out images taken from the training set (paper: 5k of 50k)"),
    ("reward.child.split_seed", 0, int, "seed of the fixed train/held-out split"),
    ("reward.child.train_subset", 0, int, "use only this many training images (0 = all)"),
    ("reward.child.val_subset", 0, int, "use only this many held-out images (0 = all)"),
    ("reward.child.N", 2, int, "normal cells per stage (paper's child: 2)"),
    ("reward.child.num_conv_filters", 8, int, "filters of the first stage, F = 24 x this for NASNet-A "
                                              "(our choice; the paper does not state the child's width)"),
    ("reward.child.stem_multiplier", 3.0, float, "CIFAR stem width = num_conv_filters x this "
                                                 "(TF-slim cifar_config: 3)"),
    ("reward.child.epochs", 20, int, "training epochs (paper's child: 20)"),
    ("reward.child.batch_size", 32, int, "SGD batch size (TF-slim's CIFAR recipe: 32; none stated for "
                                         "the child)"),
    ("reward.child.lr", 0.025, float, "peak LR of the single-period cosine schedule (cosine: paper; "
                                      "0.025: TF-slim's CIFAR recipe, none stated for the child)"),
    ("reward.child.momentum", 0.9, float, "SGD momentum (paper: 0.9)"),
    ("reward.child.weight_decay", 5e-4, float, "L2 weight decay (paper: L2, no value; 5e-4: TF-slim "
                                               "nasnet_cifar_arg_scope)"),
    ("reward.child.grad_clip", 5.0, float, "global gradient-norm clip, 0 = off (TF-slim's CIFAR recipe: 5; "
                                           "none stated for the child)"),
    ("reward.child.crop_pad", 4, int, "random crops of the input size from images zero-padded by this "
                              "(paper: 32x32 from 40x40)"),
    ("reward.child.flip", True, bool, "random horizontal flips (paper: yes)"),
    ("reward.child.seed", 0, int, "seed of weight init and batch order (the same for every child; ours)"),
    ("reward.child.device", "auto", str, "auto (cuda when visible) | cpu | cuda"),
    ("reward.child.num_threads", 0, int, "torch CPU threads per child (0 = torch's default)"),
    ("reward.child.eval_batch_size", 500, int, "batch size for held-out accuracy"),
    ("reward.child.cost_target", 0, int, "mult-adds target T of the cost-aware reward acc x (MA / T)^w "
                                         "(0: reward = accuracy)"),
    ("reward.child.cost_weight", -0.07, float, "exponent w of the cost-aware reward (MnasNet's soft "
                                               "constraint: -0.07)"),
    ("reward.child.workers", 0, int, "data-loader worker processes per child (0 = crop/flip in the "
                                     "training process)"),
    ("reward.supernet.checkpoint", None, str, "supernet.pth of a finished tools/search.py supernet run "
                                              "(its space must be this search's)"),
    ("reward.supernet.calib_batches", 8, int, "training batches (fixed) that recalibrate the path's BN "
                                              "statistics before it is scored"),
    ("reward.supernet.calib_batch_size", 0, int, "images per calibration batch (0: the supernet's training "
                                                 "batch size)"),
    ("reward.supernet.val_subset", 0, int, "score on the first this many held-out images (0: the held-out "
                                           "set the supernet was trained beside)"),
    ("reward.supernet.dataset", None, str, "dataset (null: the supernet checkpoint's)"),
    ("reward.supernet.data_dir", None, str, "folder holding the dataset's files (null: the checkpoint's)"),
    ("reward.supernet.num_threads", 0, int, "torch CPU threads per worker (0 = torch's default)"),
    ("reward.supernet.device", "auto", str, "auto (cuda when visible) | cpu | cuda"),
    ("reward.supernet.eval_batch_size", 500, int, "batch size for held-out accuracy"),
    ("reward.synthetic.kind", "match", str, "match (fraction of decisions equal to a hidden optimum) | "
                                            "pairwise (chain of decision pairs; search/landscapes.py)"),
    ("reward.synthetic.target_seed", 0, int, "seed drawing the landscape (its optimum scores 1.0)"),
    ("reward.synthetic.noise", 0.0, float, "std of Gaussian noise added to the reward"),
    ("reward.synthetic.delay", 0.0, float, "seconds each evaluation sleeps (to mimic training time)"),
    ("reward.synthetic.faults", {}, dict, "child id -> raise | nan | hang | die_once (fault injection "
                                          "for tests; hang sleeps 600 s)"),
    ("reward.synthetic.fault_dir", None, str, "folder for die_once markers (a worker dies on the first "
                                              "attempt)"),
    ("supernet.steps", 2000, int, "tools/search.py supernet: SGD steps, one uniformly sampled path each "
                                  "(cosine LR over them); data, sizes, recipe from reward.child"),
    ("supernet.seed", 0, int, "seed of the supernet's init, batch order, augmentation and path sampling"),
    ("supernet.lr", None, float, "peak LR of the cosine schedule (null: reward.child.lr)"),
    ("supernet.checkpoint_every", 100, int, "write OUT/supernet.pth every this many steps (and at the end)"),
    ("supernet.log_every", 10, int, "TensorBoard loss / lr every this many steps"),
]
