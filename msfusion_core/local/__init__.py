"""A participant's side: local training, augmentation, the participant, and cost measurement."""
