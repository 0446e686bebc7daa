"""The bounded-staleness rule (SPEC section 3), in one place: every stage of the sharded
table, in torch and in Triton (`triton.jit` of these very functions), calls it.

Versions count updates (sample occurrences). A primary's version counts the
updates applied to it. A mirror's version is its primary's version when it
was last refreshed plus the updates it has pushed since, so primary - mirror
is exactly the number of other workers' updates the copy has not seen.

    read    a mirror is read locally while it is fresh; once `outdated`
            (held + bound < primary, or the reader holds no copy: held < 0)
            its owner answers, and the copy becomes the answer plus what the
            mirror has not pushed yet (`refreshed`; base is the copy as of its
            last exchange with the owner, so copy - base is that delta)
    write   a mirror that `updates_locally` applies its own updates to its
            copy and counts them; once `due` (count > bound) it pushes
            copy - base and the count, and its version grows by the count.
            Otherwise (row-wise Adagrad at bound 0) it pushes its raw gradient
            every step, like a row not stored here, and the owner takes one
            optimizer step on every worker's gradient summed
    owner   adds every push before it serves any read

Worked example: bound 3, one mirror of id 7 on worker 1 (primary on worker 0),
SGD; each step worker 0 updates id 7 once and worker 1 updates it twice:

    step  primary before  copy held  outdated?      worker 1 after its update
    1     0               0          0 + 3 < 0: no  count 2, not due (2 <= 3)
    2     1               0          0 + 3 < 1: no  count 4 > 3: due, pushes 4 updates, held 0 + 4 = 4
    3     2 + 4 = 6       4          4 + 3 < 6: no  count 2
    4     7               4          4 + 3 < 7: no  count 4: due, pushes, held 8
    5     8 + 4 = 12      8          8 + 3 < 12: yes, refreshed: answer + its unpushed delta (none), held 12

Row-wise Adagrad: a mirror's accumulator travels with its row (the answer
carries the owner's, the push carries the mirror's accumulator delta, which
the owner adds), so the owner's accumulator ends holding every worker's
squared-gradient means: nothing is lost, it is summed per worker instead of
over the global batch's summed gradient, as the bound allows.

MUST_FETCH (-1) is the version a reader sends when it holds no copy.
"""

from __future__ import annotations

MUST_FETCH = -1


def outdated(held_version, primary_version, bound):
    """Whether a reader's copy must be refreshed: it holds none (a negative version) or it
    misses more than `bound` of the primary's updates. Tensors or Triton values."""
    return (held_version < 0) | (held_version + bound < primary_version)


def due(unpushed_count, bound):
    """Whether a mirror pushes what it has not pushed: more than `bound` updates."""
    return unpushed_count > bound


def refreshed(answer, copy, base):
    """A refreshed copy: the owner's row plus the mirror's unpushed delta (copy - base)."""
    return answer + (copy - base)


def updates_locally(bound: int, adagrad: bool) -> bool:
    """Whether mirrors apply their own updates. SGD: always (a delta pushed each step at bound 0
    is the step the owner would take). Row-wise Adagrad is not linear in the gradient, so at
    bound 0 a mirror pushes its gradient and the owner steps once on the sum: exactly synchronous."""
    return bound > 0 or not adagrad
