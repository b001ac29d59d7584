"""``fedistill robustness``: the teacher's test accuracy per rule × attack × fraction.

One real Flower simulation with ``save-replies=true`` and no attack records every round's
validated replies and the pre-trained teacher. Every cell of the grid then *replays*
those rounds in this process: the replies of the first partition ids (the clients a real
run with ``attack-fraction`` makes malicious, :func:`client.attacks.is_malicious`) are
replaced by :func:`client.attacks.poison` exactly as a malicious client does (same seed,
same wire encoding), the cell's rule aggregates them, and the coordinator's own teacher
update (``coordinator.teacher.guarded_update``) trains the teacher, which is then evaluated
on the test set. The torch RNG (dropout) is put where the coordinator's was, so the
no-attack cell of the configured rule reproduces the recorded run.

What a replay cannot show: the honest replies come from a clean run, so in a real
attacked run the honest students would also learn from the damaged teacher. A replay
understates the damage that compounds across rounds. ``--confirm`` therefore reruns the
headline cell (strongest attack, 30 % malicious) through the real pipeline with the plain
mean and with the best robust rule; ``--confirm-attacks`` adds attacks whose damage
compounds over rounds (``collude`` pushes the test set's minority class on this data),
and the headline is the attack that hurts the plain mean most in the real pipeline.

Cells whose aggregates give the teacher the same training targets from the same starting
teacher share one update: same inputs, same seeds, same result.

Modules: ``replay`` (the grid, the recorded replies, the replay engine), ``verdict`` (the
strongest attack, the best robust rule, the target check), ``page`` (docs/ROBUSTNESS.md),
``harness`` (the real runs and the files) and ``command`` (``fedistill robustness``).
"""
