"""The scoring job's stages: one composite PTransform each, thin shells over the plain,
unit-tested functions of the module each stage module is named after.

    stages/common.py    counters, the worker's tokenizer, small counting transforms
    stages/score.py     Validate, Rebatch, TokenizePairs, RunModel, Threshold, ScorePairs
                        (over validate, packing, handler)
    stages/unique.py    EncodeDistinctTexts, SideInputJoin, ShuffleJoin, ScoreUniqueTexts
                        (over textindex, joins)
    stages/store.py     LookupStore, WriteStore (over store)
    stages/groups.py    Groups (over groups)
    stages/monitor.py   Progress, Review, Canaries (over monitor)
    stages/sampling.py  SampleForReview (over sampling)
    stages/finalize.py  WriteResults, CountDistinctIds, Finalize (over publish)
    stages/rerank.py    Rerank: the cascade's second pass (over rerank)

`pipeline.job.build` wires them: ReadPairs -> ScorePairs or ScoreUniqueTexts ->
WriteResults, Groups, Review, Canaries -> Finalize. Modules below import nothing above:
stages import the plain-function modules and `pipeline.config`, never `pipeline.job`.
"""

from pipeline.stages.finalize import CountDistinctIds, Finalize, WriteResults, conform
from pipeline.stages.groups import Groups
from pipeline.stages.monitor import Canaries, Progress, Review
from pipeline.stages.sampling import SampleForReview
from pipeline.stages.score import (
    Rebatch,
    RunModel,
    ScorePairs,
    Threshold,
    TokenizePairs,
    Validate,
    handler_for,
    review_schema,
)
from pipeline.stages.store import LookupStore, WriteStore
from pipeline.stages.unique import (
    EncodeDistinctTexts,
    ScoreUniqueTexts,
    ShuffleJoin,
    SideInputJoin,
)

__all__ = [
    "Canaries", "CountDistinctIds", "EncodeDistinctTexts", "Finalize", "Groups",
    "LookupStore", "Progress", "Rebatch", "Review", "RunModel", "SampleForReview", "ScorePairs",
    "ScoreUniqueTexts", "ShuffleJoin", "SideInputJoin", "Threshold", "TokenizePairs",
    "Validate", "WriteResults", "WriteStore", "conform", "handler_for", "review_schema",
]
