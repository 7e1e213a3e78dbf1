"""The simulator answers the documents' own example requests with replies shaped
like the documents' own example replies."""

from __future__ import annotations

import json
from typing import Any

import requests

from dispatcher.simulator.core import Simulator
from dispatcher.simulator.defaults import password_for
from tests.conftest import fixture_text


def keys(doc: Any) -> Any:
    """The shape of a JSON document: its keys, recursively, with values dropped."""
    if isinstance(doc, dict):
        return {k: keys(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [keys(doc[0])] if doc else []
    return None


def test_mysms_get_send_matches_example(sim: Simulator) -> None:
    url = sim["mysms"].base_url + "send/json"
    params = {"u": "demo", "p": password_for("mysms"), "s": "MyBrand", "d": "79112223333", "t": "Hello"}
    reply = requests.get(url, params=params, timeout=5).json()
    assert keys(reply) == keys(json.loads(fixture_text("mysms", "send.json")))
    assert reply["state"] == "0" and reply["data"][0]["state"] == "2"


def test_mysms_post_xml_send_matches_example(sim: Simulator) -> None:
    body = (
        "<sendSMS><auth><username>demo</username><password>" + password_for("mysms") + "</password></auth>"
        "<data><message><source>MyBrand</source><destination>79112223333</destination>"
        "<text>Hi</text></message></data></sendSMS>"
    )
    reply = requests.post(sim["mysms"].base_url + "send/xml", data=body.encode(), timeout=5)
    assert reply.text.startswith(
        '<sendSMS xmlns:i="http://www.w3.org/2001/XMLSchema-instance"><state>0</state>'
    )
    assert "<message><id>" in reply.text and "<state>2</state></message>" in reply.text


def test_mysms_balance_uses_decimal_comma(sim: Simulator) -> None:
    reply = requests.get(
        sim["mysms"].base_url + "credit/json", params={"u": "demo", "p": password_for("mysms")}, timeout=5
    ).json()
    assert reply == {"state": "0", "balance": "100000,0000"}


def test_sms1000_push_example_defaults_to_xml(sim: Simulator) -> None:
    # 1000sms.md:100, the browser example: no format, so XML
    params = {
        "method": "push_msg",
        "email": "demo@example.com",
        "password": password_for("sms1000"),
        "text": "SMS_TEXT",
        "phone": "79160000001",
        "sender_name": "sms-tester",
    }
    reply = requests.get(sim["sms1000"].base_url, params=params, timeout=5)
    assert reply.text.startswith("<?xml")
    assert "<err_code>0</err_code>" in reply.text and "<n_raw_sms>1</n_raw_sms>" in reply.text
    as_json = requests.get(sim["sms1000"].base_url, params={**params, "format": "json"}, timeout=5).json()
    assert set(as_json) == {"msg", "data"}
    assert set(as_json["msg"]) == {"err_code", "text", "type"}
    assert set(as_json["data"]) == {"id", "credits", "n_raw_sms", "sender_name"}  # 1000sms.md:115-121


def test_smska_send_example(sim: Simulator) -> None:
    # sms-ka.md:55, with the Cyrillic text of the example
    params = {
        "APIKey": "demo",
        "APIPassword": password_for("smska"),
        "SenderID": "test",
        "MSISDN": "79041764995",
        "Message": "Проверка",
    }
    fields = requests.get(sim["smska"].base_url, params=params, timeout=5).text.split("|")
    example = fixture_text("smska", "send.txt").strip().split("|")
    assert len(fields) == len(example) and fields[0] == "0" and fields[1] == "Message sent"
    assert fields[3] == "Balance status"
    assert "79041764995|Проверка" in sim["smska"].state.received


def test_smstele_curl_examples(sim: Simulator) -> None:
    url = sim["smstele"].base_url
    login = {"login": "demo", "psw": password_for("smstele")}
    # smstele.md:97-157: no psw, too long id, empty phones, no phones
    cases = [
        ({"login": "demo", "mes": "Test message 1", "id": "custom-message-id-test-11"}, "error1.json"),
        (
            {**login, "charset": "windows-1251", "mes": "Test message 1",
             "id": "custom-message-id-test-11-too-long-1234567890abcdefghijklmnopqrstuvwxyz"},
            "error2.json",
        ),
        ({**login, "phones": "", "mes": "Test message 1", "id": "custom-message-id-test-11"}, "error3.json"),
        ({**login, "mes": "Test message 1", "id": "custom-message-id-test-11"}, "error4.json"),
    ]  # fmt: skip
    for fields, fixture in cases:
        reply = requests.post(url + "sendsms", data=fields, timeout=5).json()
        expected = json.loads(fixture_text("smstele", fixture))
        assert reply["error"] == expected["error"], fixture
        assert reply["description"].split(":")[0] == expected["description"].split(":")[0]


def test_smstele_send_example_2_shape(sim: Simulator) -> None:
    fields = {
        "login": "demo",
        "psw": password_for("smstele"),
        "phones": "79160001234,79000002233,79000006771,79260004567",
        "mes": "Test message 1",
        "id": "custom-message-id-test-22",
    }
    reply = requests.post(sim["smstele"].base_url + "sendsms", data=fields, timeout=5).json()
    expected = json.loads(fixture_text("smstele", "send2.json"))
    assert keys(reply) == keys(expected)
    assert reply["cnt"] == "2"
    assert [m["operator"] for m in reply["messages"]] == ["mMTS", "", "", "mMEGAFON"]
    status = requests.post(
        sim["smstele"].base_url + "status",
        data={"login": "demo", "psw": password_for("smstele"), "id": "custom-message-id-test-22"},
        timeout=5,
    ).json()
    assert keys(status) == keys(json.loads(fixture_text("smstele", "status.json")))
    assert [r["status"] for r in status["results"]] == ["-99", "-99"]


def test_smstele_default_charset_is_windows_1251(sim: Simulator) -> None:
    text = "Привет"
    body = "login=demo&psw=" + password_for("smstele") + "&phones=79161234567&mes="
    body_bytes = body.encode() + requests.utils.quote(text.encode("cp1251")).encode()
    requests.post(
        sim["smstele"].base_url + "sendsms",
        data=body_bytes,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=5,
    )
    assert "79161234567|Привет" in sim["smstele"].state.received


def test_prostor_send_example_request(sim: Simulator) -> None:
    # prostor.md:24-49, with our credentials; its phones carry no "+"
    body = {
        "scheduleTime": "2008-07-12T14:30:01Z",
        "messages": [
            {"phone": "71234567890", "sender": "MySender", "clientId": "1", "text": "Message text here"},
            {"phone": "71234567891", "clientId": "2", "text": "text"},
            {"phone": "71234567892", "sender": "MySender", "clientId": "3", "text": "Message text here"},
        ],
        "statusQueueName": "myQueue",
        "showBillingDetails": True,
        "login": "demo",
        "password": password_for("prostor"),
    }
    reply = requests.post(sim["prostor"].base_url + "send.json", json=body, timeout=5).json()
    assert reply["status"] == "ok"
    assert [m["status"] for m in reply["messages"]] == ["accepted"] * 3
    example = json.loads(fixture_text("prostor", "send.json"))
    assert set(example["messages"][0]) <= set(reply["messages"][0])
    queue = requests.post(
        sim["prostor"].base_url + "statusQueue.json",
        json={"login": "demo", "password": password_for("prostor"), "statusQueueLimit": "100",
              "statusQueueName": "myQueue"},
        timeout=5,
    ).json()  # fmt: skip
    assert keys(queue) == keys(json.loads(fixture_text("prostor", "queue.json")))
    balance = requests.post(
        sim["prostor"].base_url + "balance.json",
        json={"login": "demo", "password": password_for("prostor")},
        timeout=5,
    ).json()
    assert keys(balance) == keys(json.loads(fixture_text("prostor", "balance.json")))


def test_prostor_version_with_basic_auth_and_trailing_slash(sim: Simulator) -> None:
    reply = requests.post(
        sim["prostor"].base_url + "version.json/", auth=("demo", password_for("prostor")), timeout=5
    ).json()
    assert reply == {"status": "ok", "version": 2}


def test_runtime_fault_control(sim: Simulator) -> None:
    control = sim["smska"].control_url
    assert (
        requests.post(control + "faults", json={"http500_rate": 1}, timeout=5).json()["http500_rate"] == 1.0
    )
    assert requests.get(sim["smska"].base_url, timeout=5).status_code == 500
    assert requests.post(control + "faults", json={"nonsense": 1}, timeout=5).status_code == 400
    requests.post(control + "reset", timeout=5)
    assert requests.get(sim["smska"].base_url, timeout=5).status_code == 200


def test_hang_is_released_by_clearing_the_fault(sim: Simulator) -> None:
    import threading
    import time

    sim["smska"].state.faults.hang = True
    result: dict[str, float] = {}

    def call() -> None:
        started = time.monotonic()
        requests.get(sim["smska"].base_url, timeout=10)
        result["took"] = time.monotonic() - started

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.3)
    requests.post(sim["smska"].control_url + "faults", json={"hang": False}, timeout=5)
    thread.join(5)
    assert 0.25 < result["took"] < 3
