"""promote-best: retrain the top-k configs on full data, pick the winner, test it, ship it.

Every task, the built-in sign2text one and plug-ins alike, goes through one loop
(``promote.train``): each candidate (trial x seed) trains through the task's ``fit`` with
checkpoints in ``promoted/candidates/<name>/``: ``last/`` after every epoch and ``best/``
whenever the study's ``objective.metric`` improves in its ``direction``, each holding
``model.safetensors`` (and, for the built-in task, ``state.pt``: optimizer, scheduler, RNG,
history; read back with ``weights_only=True``). ``--resume`` continues a candidate from
``last/``. The winner by the same metric is tested and written to ``promoted/`` by the task's
``ship`` hook.

Modules: ``select`` (which trials, which winner), ``train`` (the loop), ``checkpoint`` (the
format and the checkpointer), ``fidelity`` (Spearman of subset vs full-data values),
``provenance`` (``metrics.json`` and ``provenance.json``). MLflow logging is
``signtune.tracking.log_promotion``; the promoted folder's format is ``signtune.inference``.
"""

from __future__ import annotations

from signtune.folders import commit_dir, recover_dir
from signtune.promote.checkpoint import STATE, WEIGHTS, Checkpointer, load_checkpoint, save_checkpoint
from signtune.promote.fidelity import MIN_FIDELITY_CONFIGS, average_ranks, rank_fidelity, spearman, study_subset
from signtune.promote.select import Candidate, improves, pick_winner, top_trials
from signtune.promote.train import PromoteResult, promote_best, train_candidate

__all__ = [
    "MIN_FIDELITY_CONFIGS",
    "STATE",
    "WEIGHTS",
    "Candidate",
    "Checkpointer",
    "PromoteResult",
    "average_ranks",
    "commit_dir",
    "improves",
    "load_checkpoint",
    "pick_winner",
    "promote_best",
    "rank_fidelity",
    "recover_dir",
    "save_checkpoint",
    "spearman",
    "study_subset",
    "top_trials",
    "train_candidate",
]

# The names promote.py had before it became this package (its tests import them).
_average_ranks, _fidelity, _spearman, _study_subset = average_ranks, rank_fidelity, spearman, study_subset
