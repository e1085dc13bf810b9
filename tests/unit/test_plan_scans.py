"""The explain reader of tests/integration/test_page_queries.py, on MongoDB's documented plan shapes.

No MongoDB server can run here, so the shapes are those of MongoDB's "Explain Results" page (classic and
slot-based engine, ``$or``, sharded) and of 8.0's express path for an ``_id`` lookup.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import plan_scans

ID_LOOKUP_8_0 = {
    "queryPlanner": {
        "namespace": "sensor_pipeline.aggregates",
        "winningPlan": {"isCached": False, "stage": "EXPRESS_IXSCAN", "keyPattern": "{ _id: 1 }", "indexName": "_id_"},
        "rejectedPlans": [],
    }
}
CLASSIC_INDEXED = {
    "queryPlanner": {
        "winningPlan": {"stage": "FETCH", "inputStage": {"stage": "IXSCAN", "indexName": "sensor_1_ts_1"}},
        "rejectedPlans": [{"stage": "COLLSCAN"}],
    }
}
CLASSIC_SCAN = {"queryPlanner": {"winningPlan": {"stage": "COLLSCAN", "filter": {"sensor": {"$eq": "s1"}}}}}
SLOT_BASED_SCAN = {
    "explainVersion": "2",
    "queryPlanner": {
        "winningPlan": {
            "queryPlan": {"stage": "SORT", "inputStage": {"stage": "COLLSCAN", "filter": {}}},
            "slotBasedPlan": {"slots": "...", "stages": "..."},
        },
        "rejectedPlans": [],
    },
}
OR_WITH_ONE_SCAN = {
    "queryPlanner": {
        "winningPlan": {
            "stage": "SUBPLAN",
            "inputStage": {
                "stage": "OR",
                "inputStages": [{"stage": "IXSCAN"}, {"stage": "COLLSCAN", "filter": {"v": {"$gt": 1}}}],
            },
        }
    }
}
SHARDED_SCAN = {
    "queryPlanner": {
        "winningPlan": {
            "stage": "SHARD_MERGE",
            "shards": [
                {"shardName": "a", "winningPlan": {"stage": "EXPRESS_IXSCAN"}},
                {"shardName": "b", "winningPlan": {"stage": "SHARDING_FILTER", "inputStage": {"stage": "COLLSCAN"}}},
            ],
        }
    }
}
FERRETDB_SEARCH = {"queryPlanner": {"Plan": ["id=3 parent=0 notused=0 detail=SEARCH t USING INDEX t_id (?=?)"]}}
FERRETDB_SCAN = {"queryPlanner": {"Plan": ["id=2 parent=0 notused=0 detail=SCAN t"]}}


def test_an_id_lookup_and_an_index_scan_are_not_scans() -> None:
    assert plan_scans(ID_LOOKUP_8_0) == []
    assert plan_scans(CLASSIC_INDEXED) == [], "a rejected plan's COLLSCAN is not what runs"
    assert plan_scans(FERRETDB_SEARCH) == []


def test_a_scan_is_found_in_every_shape_of_plan() -> None:
    for plan in (CLASSIC_SCAN, SLOT_BASED_SCAN, OR_WITH_ONE_SCAN, SHARDED_SCAN, FERRETDB_SCAN):
        assert plan_scans(plan), plan


_STAGES = st.sampled_from(["FETCH", "IXSCAN", "EXPRESS_IXSCAN", "SORT", "LIMIT", "PROJECTION_SIMPLE", "OR"])


def _tree(depth: int) -> st.SearchStrategy[dict[str, Any]]:
    leaf = st.builds(lambda stage: {"stage": stage}, _STAGES)
    if depth == 0:
        return leaf
    child = _tree(depth - 1)
    return st.one_of(
        leaf,
        st.builds(lambda stage, c: {"stage": stage, "inputStage": c}, _STAGES, child),
        st.builds(lambda stage, cs: {"stage": stage, "inputStages": cs}, _STAGES, st.lists(child, max_size=3)),
    )


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Where a stage could be replaced: every dict holding a ``stage``."""
    found = [path] if isinstance(node, dict) and "stage" in node else []
    if isinstance(node, dict):
        for key in ("inputStage", "inputStages"):
            if key in node:
                found += _paths(node[key], (*path, key))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found += _paths(item, (*path, i))
    return found


@given(tree=_tree(3), slot_based=st.booleans(), data=st.data())
def test_a_collscan_anywhere_in_the_winning_plan_is_found_and_only_then(
    tree: dict[str, Any], slot_based: bool, data: st.DataObject
) -> None:
    def plan(winning: dict[str, Any]) -> dict[str, Any]:
        return {"queryPlanner": {"winningPlan": {"queryPlan": winning} if slot_based else winning}}

    assert plan_scans(plan(tree)) == []
    where = data.draw(st.sampled_from(_paths(tree)))
    node: Any = tree
    for step in where:
        node = node[step]
    node["stage"] = "COLLSCAN"
    assert len(plan_scans(plan(tree))) == 1
