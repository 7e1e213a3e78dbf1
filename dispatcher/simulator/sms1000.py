"""Simulated 1000sms.ru (shared/providers/1000sms.md): one endpoint, ``method=``,
XML unless ``format=json``.

The document prints no example reply; where it leaves the JSON open, an instance
answers one of two ways (``QUIRKS``):

- ``json_wrapped``: False gives the document's bare ``{"msg": ..., "data": ...}``
  (1000sms.md:23-33); True puts it inside ``{"response": ...}``, as the public clients
  read it (StartupCorp/go1000sms go1000sms.go, adam-lavrik/python-smsprosto).
- ``json_numbers``: "int" prints ``err_code`` and the numeric data fields as JSON
  numbers (1000sms.md:27 calls the code "числовой"); "str" quotes them, as go1000sms
  compares ``err_code != "0"``.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar
from xml.sax.saxutils import escape

from dispatcher.simulator.base import (
    BLACKLISTED_PREFIX,
    GLOBAL_BLACKLISTED_PREFIX,
    SimProvider,
    SimRequest,
    SimResponse,
)
from dispatcher.simulator.common import phone_ok

# The texts of 1000sms.md:37-93. 602 has two (1000sms.md:49 and :51): the send and
# profile calls answer the first, get_msg_report the second (TEXT_SMS_602).
TEXTS = {
    "0": "Выполнено успешно.",
    "1": "Не корректный id SMS.",
    "2": "Неверный логин и(или) пароль.",
    "7": "Заданы не все необходимые параметры.",
    "99": "Транзакция отправки SMS не прошла.",
    "501": "Список транзакционных номеров не найден. Попробуйте позже.",
    "602": "Пользователя не существует.",
    "603": "Не корректная информация по Пользователю или Статусу SMS.",
    "604": "Не корректный id пользователя.",
    "605": "Пользователь заблокирован.",
    "607": "Имя отправителя недопустимо.",
    "608": "Не допустимая длина имени отправителя.",
    "609": "Сотовый оператор не подключен.",
    "610": "Не подключен тариф пользователю.",
    "611": "Не корректно установлена стоимость SMS.",
    "612": "Не корректный id Тарифной группы.",
    "614": "Тарифной группы не существует.",
    "615": "Не корректная информация по id тарифной группы.",
    "616": "Не указан источник отправки SMS.",
    "617": "Неверный формат номера получателя SMS.",
    "618": "Номер Абонента в Черном списке.",
    "619": "Номер не является допустимым Номером СМС-центра.",
    "620": "Имя отправителя должно быть на латинице.",
    "621": "В имени отправителя более 2-цифр или общая длина менее 4-х символов, что недопустимо.",
    "622": "Номер Абонента в глобальном Черном списке.",
    "623": "Не достаточно средств. Пополните баланс.",
    "624": "Обнаружены запрещенные слова в тексте сообщения. Обратитесь в поддержку.",
    "699": "Не удалось установить соединение.",
}
TEXT_SMS_602 = "SMS не существует."
# get_msg_report `state` per simulated stage (1000sms.md:161): 4 is the operator's SMSC
# holding the message, so it comes after "Отправлено".
_STATE = {"accepted": "0", "sent": "4", "delivered": "1", "undelivered": "2"}
_STATE_TEXT = {"0": "Отправлено", "4": "В очереди на SMSC", "1": "Доставлено", "2": "Не доставлено"}
# Data fields that are numbers, printed as such under json_numbers = "int".
_NUMERIC = frozenset({"id", "credits", "n_raw_sms", "state", "credits_used"})
USER_ID = "4242"
DEFAULT_SENDER = "sms-tester"  # the profile's default sender (1000sms.md:197)


def sender_error(sender: str) -> str | None:
    """The code the service answers a sender name with (1000sms.md:83, :61, :85)."""
    if not re.fullmatch(r"[A-Za-z0-9 ._-]+", sender):
        return "620"
    if len(sender) > 11:  # GSM's alphanumeric limit; the document gives no number
        return "608"
    if sum(ch.isdigit() for ch in sender) > 2 or len(sender) < 4:
        return "621"
    return None


class Sms1000Sim(SimProvider):
    KIND = "sms1000"
    QUIRKS: ClassVar[dict[str, Any]] = {"json_wrapped": False, "json_numbers": "int"}

    def is_traffic(self, req: SimRequest) -> bool:
        return req.form.get("method") in ("push_msg", "get_msg_report")

    def is_status(self, req: SimRequest) -> bool:
        return req.form.get("method") == "get_msg_report"

    def internal_error(self, req: SimRequest) -> SimResponse:
        code = "99" if req.form.get("method") == "push_msg" else "501"
        return self._reply(req, code, {})

    def route(self, req: SimRequest) -> SimResponse:
        f = req.form
        if not self.state.auth_ok(f.get("email"), f.get("password")):
            return self._reply(req, "2", {})
        method = f.get("method", "")
        if method == "push_msg":
            return self._push(req)
        if method == "get_msg_report":
            msg_id = f.get("id", "")
            if not msg_id.isdigit():
                return self._reply(req, "1", {})
            msg = self.state.get(msg_id)
            if msg is None:
                return self._reply(req, "602", {}, text=TEXT_SMS_602)
            state = _STATE[msg.stage]
            return self._reply(
                req,
                "0",
                {
                    "id": USER_ID,  # the user's id, not the message's (1000sms.md:139)
                    "sender_name": msg.sender,
                    "text": msg.text,
                    "phone": msg.phone,
                    "type": "1",
                    "n_raw_sms": str(msg.segments),
                    "start_time": "",
                    "last_update": "",
                    "state": state,
                    "credits": f"{self.state.account.price:.2f}",
                    "state_text": _STATE_TEXT[state],
                },
            )
        if method == "get_profile":
            return self._reply(
                req,
                "0",
                {
                    "id": USER_ID,
                    "email": self.state.account.login,
                    "first_name": "Demo",
                    "last_name": "Simulator",
                    "credits": f"{self.state.account.balance:.2f}",
                    "credits_used": "0",
                    "credits_name": "руб.",
                    "currency": "руб.",
                    "sender_name": DEFAULT_SENDER,
                    "referral_id": "",
                },
            )
        return self._reply(req, "7", {})

    def _push(self, req: SimRequest) -> SimResponse:
        f = req.form
        if self.state.faults.error_code:
            return self._reply(req, self.state.faults.error_code, {})
        text, phone, sender = f.get("text", ""), f.get("phone", ""), f.get("sender_name", DEFAULT_SENDER)
        if not text or not phone:
            return self._reply(req, "7", {})
        if not phone_ok(phone):
            return self._reply(req, "617", {})
        if phone.startswith(BLACKLISTED_PREFIX):
            return self._reply(req, "618", {})  # 1000sms.md:79
        if phone.startswith(GLOBAL_BLACKLISTED_PREFIX):
            return self._reply(req, "622", {})  # 1000sms.md:87
        refused = sender_error(sender)
        if refused:
            return self._reply(req, refused, {})
        charged = self.state.charge(text)
        if charged is None:
            return self._reply(req, "623", {})
        msg = self.state.accept(phone, text, sender, style="digits")
        return self._reply(
            req,
            "0",
            {
                "id": msg.pid,
                "credits": f"{self.state.account.price:.2f}",  # per part (1000sms.md:117)
                "n_raw_sms": str(msg.segments),
                "sender_name": sender,
            },
        )

    def _reply(
        self, req: SimRequest, code: str, data: dict[str, Any], text: str | None = None
    ) -> SimResponse:
        text = text or TEXTS.get(code, "Ошибка.")
        kind = "message" if code == "0" else "error"
        if req.form.get("format", "").lower() == "json":
            numbers = self.state.quirk("json_numbers") == "int"
            doc: dict[str, Any] = {
                "msg": {"err_code": _number(code) if numbers else code, "text": text, "type": kind},
                "data": {k: _number(v) if numbers and k in _NUMERIC else v for k, v in data.items()},
            }
            return self.json_reply({"response": doc} if self.state.quirk("json_wrapped") else doc)
        items = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in data.items())
        body = (
            '<?xml version="1.0" encoding="utf-8"?>'
            f"<response><msg><err_code>{code}</err_code><text>{escape(text)}</text><type>{kind}</type></msg>"
            f"<data>{items}</data></response>"
        )
        return SimResponse(200, body, "text/xml; charset=utf-8")


def _number(value: Any) -> Any:
    """A numeric string as a JSON number; anything else as it is."""
    text = str(value)
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if re.fullmatch(r"-?\d+\.\d+", text):
        return float(text)
    return value
