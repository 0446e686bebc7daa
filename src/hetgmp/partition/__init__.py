"""HET-GMP's graph partitioner (SPEC §2): the sample/row bigraph, its cost,
the original and the fast refinement, mirror priority, and the plan file.

Entry points: `run.partition_dataset` (what `hetgmp partition` runs) and
`plan.PartitionPlan` (what the trainer loads).
"""
