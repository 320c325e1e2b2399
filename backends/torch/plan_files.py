"""Names of the torch-native files in OUT/plan, shared by the translator and the worker."""

PEFT_CONFIG = "peft_config.json"  # peft.LoraConfig keyword arguments
DS_CONFIG = "ds_config.json"  # a DeepSpeed config, present when parallel.zero > 0
