"""pipeline.mongo: what the pipeline's MongoDB client asks of the server, read from MONGO_URI.

The clients are built exactly as the services build them (``mongo_client``) and
never connect (``connect=False``): these tests read the driver's own view of its
options (``write_concern``, ``options.retry_writes``, ``options.replica_set_name``,
the seeds), so they hold for whatever server the URI names. The same client
writing to the real FerretDB is in tests/integration/test_mongo_write_concern.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymongo import MongoClient, WriteConcern
from pymongo.read_preferences import ReadPreference

from pipeline.mongo import DRIVER_DEFAULTS, MongoUriError, driver_options, mongo_client, uri_options
from pipeline.settings import MongoSettings

#: The URIs the stacks give the services: make run's FerretDB, Compose's single mongo, Compose's replica set.
FERRETDB = "mongodb://pipeline:s3cret-Pass@127.0.0.1:27017/sensor_pipeline?authSource=sensor_pipeline"
COMPOSE = "mongodb://pipeline:s3cret-Pass@mongo:27017/sensor_pipeline?authSource=sensor_pipeline"
REPLICA_SET = (
    "mongodb://pipeline:s3cret-Pass@mongo:27017,mongo2:27017,mongo3:27017/sensor_pipeline"
    "?authSource=sensor_pipeline&replicaSet=rs0"
)

#: Passwords as `make env` writes them (URL-safe) and as a person might (quoted in the URI).
passwords = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=12, max_size=40)
#: Every read preference mode, in lower case.
READ_PREFERENCES = {"primary", "primarypreferred", "secondary", "secondarypreferred", "nearest"}
set_names = st.from_regex(r"[A-Za-z0-9_-]{1,30}", fullmatch=True)


@contextmanager
def client_of(uri: str) -> Iterator[MongoClient[dict[str, Any]]]:
    """The client a service would make of ``uri``, without connecting."""
    client = mongo_client(MongoSettings(MONGO_URI=uri), connect=False)
    try:
        yield client
    finally:
        client.close()


def refusal(uri: str, capsys: pytest.CaptureFixture[str]) -> str:
    """What a service prints when ``mongo_client`` refuses ``uri``; fails unless it exits with code 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        mongo_client(MongoSettings(MONGO_URI=uri), connect=False)
    assert stopped.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("uri", [FERRETDB, COMPOSE, REPLICA_SET])
def test_by_default_writes_wait_for_a_majority_and_are_retried(uri: str) -> None:
    with client_of(uri) as client:
        assert client.write_concern == WriteConcern(w="majority")
        assert client.write_concern.acknowledged
        assert client.options.retry_writes is True
        assert client.options.retry_reads is True
        assert client.read_preference == ReadPreference.PRIMARY


def test_a_standalone_uri_names_no_replica_set() -> None:
    with client_of(FERRETDB) as client:
        assert client.options.replica_set_name is None


def test_the_replica_set_uri_names_rs0_and_seeds_all_three_members() -> None:
    with client_of(REPLICA_SET) as client:
        assert client.options.replica_set_name == "rs0"
        seeds = set(client.topology_description.server_descriptions())
        assert seeds == {("mongo", 27017), ("mongo2", 27017), ("mongo3", 27017)}


@given(members=st.integers(min_value=1, max_value=50))
def test_a_number_of_members_in_the_uri_is_kept(members: int) -> None:
    with client_of(f"{REPLICA_SET}&w={members}") as client:
        assert client.write_concern == WriteConcern(w=members)
    assert "w" not in driver_options(f"{REPLICA_SET}&w={members}")


@given(name=set_names, retry=st.booleans(), preference=st.sampled_from(["primary", "primaryPreferred", "nearest"]))
def test_what_the_uri_says_wins_over_the_defaults(name: str, retry: bool, preference: str) -> None:
    uri = f"{REPLICA_SET.replace('rs0', name)}&retryWrites={str(retry).lower()}&readPreference={preference}"
    with client_of(uri) as client:
        assert client.options.replica_set_name == name
        assert client.options.retry_writes is retry
        assert client.read_preference.mongos_mode == preference
        assert client.write_concern == WriteConcern(w="majority"), "an unset w still gets the default"


@given(option=st.sampled_from(sorted(DRIVER_DEFAULTS)), spelling=st.sampled_from([str.lower, str.upper, str]))
def test_an_option_in_the_uri_is_recognised_in_any_case(option: str, spelling: Any) -> None:
    value = "1" if option == "w" else "false"
    options = driver_options(f"{FERRETDB}&{spelling(option)}={value}")
    assert option not in options
    assert set(options) == set(DRIVER_DEFAULTS) - {option}


def test_unacknowledged_writes_are_refused_naming_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    err = refusal(f"{REPLICA_SET}&w=0", capsys)
    assert "invalid settings, the service cannot start" in err
    assert "MONGO_URI: w=0" in err
    assert "s3cret-Pass" not in err


@given(
    bad=st.one_of(
        st.integers(max_value=-1).map(lambda n: f"w={n}"),
        st.just("w="),
        st.just("w=0"),
        st.just("replicaSet="),
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=12)
        .filter(lambda s: s.lower() not in READ_PREFERENCES)
        .map(lambda s: f"readPreference={s}"),
        st.sampled_from(["retryWrites=maybe", "retryWrites=", "journal=perhaps", "wTimeoutMS=-5", "bogus=1"]),
    ),
    password=passwords,
)
def test_every_bad_option_stops_the_service_naming_mongo_uri_never_the_password(bad: str, password: str) -> None:
    uri = COMPOSE.replace("s3cret-Pass", quote_plus(password)) + "&" + bad
    with pytest.raises(MongoUriError) as refused:
        uri_options(uri)
    message = str(refused.value)
    assert message.startswith("MONGO_URI: ")
    assert password not in message and quote_plus(password) not in message


@given(password=passwords, hosts=st.lists(st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True), min_size=1, max_size=5))
def test_any_password_and_hosts_parse_and_keep_the_defaults(password: str, hosts: list[str]) -> None:
    uri = f"mongodb://u:{quote_plus(password)}@{','.join(f'{h}:27017' for h in hosts)}/db?authSource=db"
    assert driver_options(uri) == dict(DRIVER_DEFAULTS)


def test_an_unescaped_password_is_refused_without_showing_it(capsys: pytest.CaptureFixture[str]) -> None:
    err = refusal("mongodb://pipeline:p@ss:word@mongo:27017/db", capsys)
    assert "MONGO_URI: " in err and "escaped" in err
    assert "p@ss:word" not in err and "ss:word" not in err


def test_a_dns_seedlist_uri_is_checked_without_a_lookup() -> None:
    assert driver_options("mongodb+srv://u:p@cluster0.invalid/db?w=majority") == {
        "retryWrites": True,
        "retryReads": True,
    }
    with pytest.raises(MongoUriError, match="MONGO_URI: w=0"):
        uri_options("mongodb+srv://u:p@cluster0.invalid/db?w=0")
