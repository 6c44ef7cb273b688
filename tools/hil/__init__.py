"""The hardware-in-loop bench (`lucida hil`): scenarios run against an emulated or a real device.

scenario (YAML, validated) -> dut (EmulatedDut: the daemon as a subprocess with a virtual
microscope and an emulated nosepiece; RemoteDut: a real device's daemon) -> runner (steps,
checks, verdicts; timing from the device's own clock) -> report (JSON, JUnit XML, HTML + PNGs).
"""

from .scenario import Scenario, ScenarioError, load_scenario, parse_scenario

__all__ = ["Scenario", "ScenarioError", "load_scenario", "parse_scenario"]
