"""Efficacy of releases: does a published medue release stop an unauthorised model from learning?

Every number comes from files ``medue run`` wrote, read back and attacked with the true labels
(:mod:`medue.efficacy.release`); benchmark sets are files plus a labels table (:mod:`medue.efficacy.dataset`);
attackers are MONAI networks (:mod:`medue.efficacy.attackers`) trained by :mod:`medue.efficacy.train`, with and
without the countermeasures of :mod:`medue.efficacy.countermeasures`.
"""

from medue.efficacy.dataset import stratified_split, write_image_set
from medue.efficacy.release import ReleaseEvalSettings, evaluate_release, results_markdown, summarise

__all__ = ["ReleaseEvalSettings", "evaluate_release", "results_markdown", "stratified_split", "summarise",
           "write_image_set"]
