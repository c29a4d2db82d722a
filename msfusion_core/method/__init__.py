"""The method: split maps, slicing, sub-model building, planners, overlap, growth, aggregation,
robust aggregation, the contrastive loss, coverage, and the server's side of a round."""
