"""Simulated 1000sms.ru (shared/providers/1000sms.md): one endpoint, ``method=``,
XML unless ``format=json``."""

from __future__ import annotations

import re
from typing import Any
from xml.sax.saxutils import escape

from dispatcher.simulator.base import SimProvider, SimRequest, SimResponse
from dispatcher.simulator.common import phone_ok

TEXTS = {
    "0": "Выполнено успешно.",
    "1": "Не корректный id SMS.",
    "2": "Неверный логин и(или) пароль.",
    "7": "Заданы не все необходимые параметры.",
    "99": "Транзакция отправки SMS не прошла.",
    "501": "Список транзакционных номеров не найден. Попробуйте позже.",
    "602": "SMS не существует.",
    "617": "Неверный формат номера получателя SMS.",
    "620": "Имя отправителя должно быть на латинице.",
    "621": "В имени отправителя более 2-цифр или общая длина менее 4-х символов, что недопустимо.",
    "623": "Не достаточно средств. Пополните баланс.",
}
# get_msg_report `state` per simulated stage (1000sms.md:161)
_STATE = {"accepted": "4", "sent": "0", "delivered": "1", "undelivered": "2"}
_STATE_TEXT = {"4": "В очереди на SMSC", "0": "Отправлено", "1": "Доставлено", "2": "Не доставлено"}
USER_ID = "4242"


class Sms1000Sim(SimProvider):
    KIND = "sms1000"

    def is_traffic(self, req: SimRequest) -> bool:
        return req.form.get("method") in ("push_msg", "get_msg_report")

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
                return self._reply(req, "602", {})  # the "SMS does not exist" reading
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
                    "sender_name": "sms-tester",
                    "referral_id": "",
                },
            )
        return self._reply(req, "7", {})

    def _push(self, req: SimRequest) -> SimResponse:
        f = req.form
        if self.state.faults.error_code:
            return self._reply(req, self.state.faults.error_code, {})
        text, phone, sender = f.get("text", ""), f.get("phone", ""), f.get("sender_name", "sms-tester")
        if not text or not phone:
            return self._reply(req, "7", {})
        if not phone_ok(phone):
            return self._reply(req, "617", {})
        if not re.fullmatch(r"[A-Za-z0-9 ._-]+", sender):
            return self._reply(req, "620", {})
        if (sum(ch.isdigit() for ch in sender) > 2 and not sender.isdigit()) or len(sender) < 4:
            return self._reply(req, "621", {})
        charged = self.state.charge(text)
        if charged is None:
            return self._reply(req, "623", {})
        msg = self.state.accept(phone, text, sender, style="digits")
        return self._reply(
            req,
            "0",
            {
                "id": msg.pid,
                "credits": f"{self.state.account.price:.2f}",
                "n_raw_sms": str(msg.segments),
                "sender_name": sender,
            },
        )

    def _reply(self, req: SimRequest, code: str, data: dict[str, Any]) -> SimResponse:
        text = TEXTS.get(code, "Ошибка.")
        kind = "message" if code == "0" else "error"
        if req.form.get("format", "").lower() == "json":
            return self.json_reply({"msg": {"err_code": code, "text": text, "type": kind}, "data": data})
        items = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in data.items())
        body = (
            '<?xml version="1.0" encoding="utf-8"?>'
            f"<response><msg><err_code>{code}</err_code><text>{escape(text)}</text><type>{kind}</type></msg>"
            f"<data>{items}</data></response>"
        )
        return SimResponse(200, body, "text/xml; charset=utf-8")
