"""The wire format of each simulated provider kind."""

from __future__ import annotations

from dispatcher.simulator.base import SimProvider
from dispatcher.simulator.mysms import MySmsSim
from dispatcher.simulator.prostor import ProstorSim
from dispatcher.simulator.sms1000 import Sms1000Sim
from dispatcher.simulator.smska import SmsKaSim
from dispatcher.simulator.smstele import SmsTeleSim

SIM_CLASSES: dict[str, type[SimProvider]] = {
    cls.KIND: cls for cls in (MySmsSim, Sms1000Sim, SmsKaSim, SmsTeleSim, ProstorSim)
}
