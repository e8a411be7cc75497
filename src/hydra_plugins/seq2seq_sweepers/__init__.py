"""Hydra sweepers of seq2seq (Hydra looks for plugins in the ``hydra_plugins`` namespace).

:class:`ResumableOptunaSweeper` (``hparams_search=optuna``) is hydra-optuna-sweeper's sweeper with
one change: a study kept in storage (``hydra.sweeper.storage=sqlite:///optuna.db``) *resumes* when
the same command runs again. The plugin alone already loads a stored study, but then runs
``n_trials`` new trials numbered from job 0 again (into the folders of the first trials) and leaves
the trials a killed sweep was running as RUNNING forever. Here, before the sweep:

* the trials still RUNNING in the stored study (the sweep that ran them was killed) are marked FAIL,
  with the user attribute ``interrupted``;
* only what is left of ``n_trials`` runs: ``n_trials`` minus the trials that ended (complete,
  failed or pruned; the interrupted ones do not count), so the study ends with ``n_trials`` trials;
* new jobs are numbered after every trial of the study, so trial *k* lives in ``<sweep dir>/k``
  (keep ``hydra.sweep.dir`` fixed to continue in the same folder).

A study that is not in storage, or not there yet, starts as the plugin starts it. Without
hydra-optuna-sweeper installed this module defines nothing.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # the Optuna sweeper is not installed: nothing to extend
    OptunaSweeper = None

SWEEPERS: list = []


def resume_study(impl: Any) -> None:
    """Prepare hydra-optuna-sweeper's ``OptunaSweeperImpl`` to continue its stored study (see above)."""
    import optuna

    if not impl.storage or not impl.study_name:
        return
    try:
        study = optuna.load_study(study_name=impl.study_name, storage=impl.storage)
    except KeyError:  # no such study yet: the plugin creates it
        return
    interrupted = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    for trial in interrupted:
        study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    ended = len(study.trials) - len(interrupted)
    left = max(0, impl.n_trials - ended)
    log.info("Resuming study %s: %d trials ended, %d interrupted (now failed), %d to run; jobs numbered from %d",
             impl.study_name, ended, len(interrupted), left, len(study.trials))
    impl.n_trials, impl.job_idx = left, len(study.trials)


if OptunaSweeper is not None:

    class ResumableOptunaSweeper(OptunaSweeper):
        """hydra-optuna-sweeper's ``OptunaSweeper`` whose stored study resumes (module docstring)."""

        def sweep(self, arguments: list[str]) -> None:
            resume_study(self.sweeper)
            return super().sweep(arguments)

    SWEEPERS.append(ResumableOptunaSweeper)
