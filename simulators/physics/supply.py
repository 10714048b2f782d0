"""Medical oxygen supply physics: buffer tank, cylinder manifold, liquid-oxygen (VIE) tank and a
pipeline area alarm panel / zone valve box, stepped in simulated time.

Every model is advanced by the caller (``advance(dt_s)``) so a test or a scenario runs days of
supply in milliseconds, and reports its canonical fields with ``values()`` (the Modbus server
encodes them through the device's profile, o2base/profiles/*.toml). Pressures are gauge kPa;
gas amounts and flows are normal cubic metres (0 degC, 101.325 kPa), as cylinder contents and
supply contracts state them. ``flow_m3h`` is what the device's own meter shows.

Shared physics:

- **Line regulator** (:class:`LineRegulator`): the delivered line pressure is the setpoint less a
  droop proportional to the flow (a single-stage regulator's outlet falls as it opens) and less
  the ``drift_kpa`` of a failing regulator (``drift_kpa_per_h`` grows it in simulated time);
  never above what the source upstream still holds (``inlet_kpa - min_dp_kpa``).
- **Demand** (:class:`Demand`): the drawn flow, a constant ``demand_m3h`` times an optional daily
  swing, plus a ``leak_m3h`` fault that no meter downstream sees.
- **Sensor stuck** (:attr:`SupplyModel.stuck`): ``values()`` keeps reporting the values it had
  when the fault began (the transmitter froze; the physics goes on).

Numbers (sources in docs/domain.md, "Limits and alarms", "Medical gas supply"):
nominal oxygen line pressure 400 kPa (project default; NFPA 99 pipelines run at 345-380 kPa);
1 L of liquid oxygen (1.141 kg) gives 0.80 Nm3 of gas; a VIE tank with nothing drawn warms until
it blows off through its safety valve after about a week; the boil-off of a VIE tank (0.5 % of
its capacity a day) is a project choice.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

# Normal m3 of gas per litre of liquid: 1.141 kg/L at the boiling point (docs/domain.md,
# "Medical gas supply") / 31.999 g/mol x 22.414 L/mol (ideal gas at 0 degC, 101.325 kPa).
LOX_NM3_PER_L = 1.141 / 31.999 * 22.414
ATM_KPA = 101.325
Value = float | int | bool


@dataclass
class LineRegulator:
    """Pressure regulator feeding the pipeline (gauge kPa, normal m3/h)."""

    setpoint_kpa: float = 400.0
    droop_kpa_per_m3h: float = 0.5  # outlet falls with flow (regulator droop / line drop)
    min_dp_kpa: float = 50.0  # the regulator needs this much above its outlet
    drift_kpa: float = 0.0  # fault: setpoint lost (positive = lower outlet)
    drift_kpa_per_h: float = 0.0  # fault: a failing regulator drifts on in simulated time

    def advance(self, dt_s: float) -> None:
        self.drift_kpa += self.drift_kpa_per_h * dt_s / 3600.0

    def outlet_kpa(self, inlet_kpa: float, flow_m3h: float) -> float:
        wanted = self.setpoint_kpa - self.droop_kpa_per_m3h * flow_m3h - self.drift_kpa
        return max(0.0, min(wanted, inlet_kpa - self.min_dp_kpa))


@dataclass
class Demand:
    """Flow drawn from a supply (normal m3/h)."""

    demand_m3h: float = 3.0
    daily_swing: float = 0.0  # 0.3: +-30 % between night and day (peak at 14:00 sim time)
    leak_m3h: float = 0.0  # fault: a leak downstream of the meter's reach or upstream of it

    def metered_m3h(self, sim_time_s: float) -> float:
        phase = 2.0 * math.pi * ((sim_time_s / 86400.0) - 14.0 / 24.0)
        return max(0.0, self.demand_m3h * (1.0 + self.daily_swing * math.cos(phase)))


class SupplyModel:
    """Common stepping, noise and the stuck-sensor fault of the supply models."""

    powered = True  # the Modbus server asks; supply transmitters are on mains or loop power

    def __init__(self, seed: int = 0):
        self._rng = random.Random(seed)
        self.sim_time_s = 0.0
        self.stuck = False  # fault: the transmitter keeps sending the values it had
        self._stuck_values: dict[str, Value] | None = None

    def power_on(self, on: bool) -> None:
        self.powered = on

    def _step(self, dt_s: float) -> None:  # pragma: no cover - every model overrides
        raise NotImplementedError

    def advance(self, dt_s: float) -> None:
        """Step the model by ``dt_s`` simulated seconds (in slices of at most 60 s, so a
        changeover or a pressure switch lands within a minute of when it should)."""
        remaining = max(0.0, dt_s)
        while remaining > 0.0:
            step = min(60.0, remaining)
            self.sim_time_s += step
            self._step(step)
            remaining -= step

    def _values(self) -> dict[str, Value]:  # pragma: no cover - every model overrides
        raise NotImplementedError

    def values(self) -> dict[str, Value]:
        """Canonical supply fields as the device reports them now."""
        if self.stuck:
            if self._stuck_values is None:
                self._stuck_values = self._values()
            return dict(self._stuck_values)
        self._stuck_values = None
        return self._values()

    def _noise(self, sigma: float) -> float:
        return self._rng.gauss(0.0, sigma) if sigma > 0 else 0.0


# The controllers' own alarm outputs (their status words): line pressure outside +-20 % of the
# regulator setpoint (the NFPA 99 area alarm band, docs/domain.md "Medical gas supply") and the
# vessel within 100 kPa of its safety valve.
LINE_ALARM_BAND = 0.20
TANK_HIGH_MARGIN_KPA = 100.0


def _line_alarms(line_kpa: float, setpoint_kpa: float) -> tuple[bool, bool]:
    return (
        line_kpa < setpoint_kpa * (1.0 - LINE_ALARM_BAND),
        line_kpa > setpoint_kpa * (1.0 + LINE_ALARM_BAND),
    )


# --------------------------------------------------------------------------- buffer tank
@dataclass
class BufferTankParams:
    """Receiver between a PSA plant (or compressor) and the line. Gauge kPa, normal m3."""

    volume_m3: float = 2.0  # water volume of the vessel
    cut_in_kpa: float = 600.0  # the plant starts filling below this ...
    cut_out_kpa: float = 800.0  # ... and stops above this (pressure switch)
    fill_m3h: float = 15.0  # plant output while filling (normal m3/h)
    relief_kpa: float = 1000.0  # safety valve setting
    ambient_c: float = 15.0
    regulator: LineRegulator = field(default_factory=LineRegulator)
    demand: Demand = field(default_factory=Demand)


class BufferTankModel(SupplyModel):
    """Buffer / receiver tank: isothermal ideal gas, dP/dt = (Qin - Qout) x P_atm / V.

    ``level_pct`` is the level-equivalent the tank's controller shows: the usable gas between
    the regulator's minimum inlet (setpoint + its min_dp) and the cut-out pressure, in %.
    Faults: ``plant_failed`` (no more inflow: the tank empties at the drawn flow), the demand's
    ``leak_m3h``, the regulator's drift, ``stuck``.

    ``inflow_m3h`` (None: the pressure switch and ``fill_m3h`` above) is set by a scenario
    whose plant feeds the tank: the plant's product flow, whatever the tank's pressure.
    """

    def __init__(self, params: BufferTankParams | None = None, seed: int = 0):
        super().__init__(seed)
        self.params = params or BufferTankParams()
        self.tank_kpa = self.params.cut_out_kpa
        self.filling = False
        self.plant_failed = False
        self.temp_c = self.params.ambient_c
        self.inflow_m3h: float | None = None

    def source_kpa(self) -> float:
        """The pressure upstream of the line regulator (what a riser downstream can draw on)."""
        return self.tank_kpa

    def _out_m3h(self) -> float:
        p = self.params
        line = p.regulator.outlet_kpa(self.tank_kpa, p.demand.metered_m3h(self.sim_time_s))
        # Consumers draw in proportion to the line pressure they get (fixed orifices).
        share = min(1.0, line / p.regulator.setpoint_kpa) if p.regulator.setpoint_kpa else 0.0
        return p.demand.metered_m3h(self.sim_time_s) * share + p.demand.leak_m3h * (
            1.0 if self.tank_kpa > 0 else 0.0
        )

    def _step(self, dt_s: float) -> None:
        p = self.params
        p.regulator.advance(dt_s)
        if self.inflow_m3h is not None:
            inflow = 0.0 if self.plant_failed else max(0.0, self.inflow_m3h)
            self.filling = inflow > 0.0
        else:
            if self.tank_kpa < p.cut_in_kpa:
                self.filling = True
            elif self.tank_kpa >= p.cut_out_kpa:
                self.filling = False
            inflow = p.fill_m3h if self.filling and not self.plant_failed else 0.0
        d_nm3 = (inflow - self._out_m3h()) * dt_s / 3600.0
        # n (normal m3) = V x P_abs / P_atm at a constant temperature.
        self.tank_kpa = max(0.0, self.tank_kpa + d_nm3 * ATM_KPA / p.volume_m3)
        self.tank_kpa = min(self.tank_kpa, p.relief_kpa)
        # Compression heats the vessel a little while the plant fills it.
        target_c = p.ambient_c + (4.0 if inflow > 0 else 0.0)
        self.temp_c = target_c + (self.temp_c - target_c) * math.exp(-dt_s / 1800.0)

    def _values(self) -> dict[str, Value]:
        p = self.params
        reg = p.regulator
        drawn = p.demand.metered_m3h(self.sim_time_s)
        line = reg.outlet_kpa(self.tank_kpa, drawn)
        floor = reg.setpoint_kpa + reg.min_dp_kpa
        level = 100.0 * (self.tank_kpa - floor) / (p.cut_out_kpa - floor)
        share = min(1.0, line / reg.setpoint_kpa) if reg.setpoint_kpa else 0.0
        return {
            "tank_kpa": max(0.0, self.tank_kpa + self._noise(1.0)),
            "pressure_kpa": max(0.0, line + self._noise(0.5)),
            "temp_c": self.temp_c,
            "level_pct": max(0.0, min(100.0, level)),
            "flow_m3h": max(0.0, drawn * share + self._noise(0.02 * p.demand.demand_m3h)),
            "filling": self.filling and not self.plant_failed,
            "alarm_line_low": _line_alarms(line, reg.setpoint_kpa)[0],
            "alarm_tank_high": self.tank_kpa > p.relief_kpa - TANK_HIGH_MARGIN_KPA,
        }


# --------------------------------------------------------------------------- cylinder manifold
@dataclass
class ManifoldParams:
    """Two banks of cylinders with automatic changeover. Gauge kPa, normal m3."""

    cylinders_per_bank: int = 10
    cylinder_water_l: float = 40.0  # the common 40 L cylinder
    full_kpa: float = 15000.0  # 15 MPa filling pressure
    changeover_kpa: float = 1000.0  # the manifold switches banks below this
    regulator: LineRegulator = field(default_factory=LineRegulator)
    demand: Demand = field(default_factory=Demand)


class ManifoldModel(SupplyModel):
    """Cylinder manifold: the bank in service empties at the drawn flow; below
    ``changeover_kpa`` the manifold changes over to the other bank (``changeovers`` + 1) and
    reports ``reserve_in_use`` until the empty bank is replaced (:meth:`replace_bank`).

    Bank content (ideal gas): n = banks x cylinders x water volume x P_abs / P_atm.
    ``bank_in_service``: 0 = left, 1 = right.
    Faults: ``changeover_failed`` (the changeover valve sticks: the manifold keeps drawing the
    empty bank, the line pressure collapses once the bank is below the regulator's inlet), the
    demand's ``leak_m3h``, the regulator's drift, ``stuck``.
    """

    def __init__(self, params: ManifoldParams | None = None, seed: int = 0, in_service: int = 0):
        super().__init__(seed)
        self.params = params or ManifoldParams()
        self.bank_kpa = [self.params.full_kpa, self.params.full_kpa]
        self.in_service = in_service
        self.changeovers = 0
        self.reserve_in_use = False
        self.changeover_failed = False

    @property
    def bank_volume_m3(self) -> float:
        p = self.params
        return p.cylinders_per_bank * p.cylinder_water_l / 1000.0

    def source_kpa(self) -> float:
        """The pressure upstream of the line regulator: the bank in service."""
        return self.bank_kpa[self.in_service]

    def replace_bank(self, bank: int) -> None:
        """Cylinders of ``bank`` (0 left, 1 right) replaced by full ones: reserve restored."""
        self.bank_kpa[bank] = self.params.full_kpa
        if bank != self.in_service:
            self.reserve_in_use = False

    def _line_kpa(self) -> float:
        p = self.params
        drawn = p.demand.metered_m3h(self.sim_time_s)
        return p.regulator.outlet_kpa(self.bank_kpa[self.in_service], drawn)

    def _step(self, dt_s: float) -> None:
        p = self.params
        p.regulator.advance(dt_s)
        bank = self.in_service
        other = 1 - bank
        if (
            self.bank_kpa[bank] < p.changeover_kpa
            and not self.changeover_failed
            and self.bank_kpa[other] > self.bank_kpa[bank]
        ):
            self.in_service = bank = other
            self.changeovers += 1
            self.reserve_in_use = True
        line = self._line_kpa()
        share = min(1.0, line / p.regulator.setpoint_kpa) if p.regulator.setpoint_kpa else 0.0
        out_m3h = p.demand.metered_m3h(self.sim_time_s) * share + p.demand.leak_m3h
        d_nm3 = out_m3h * dt_s / 3600.0
        self.bank_kpa[bank] = max(0.0, self.bank_kpa[bank] - d_nm3 * ATM_KPA / self.bank_volume_m3)

    def _values(self) -> dict[str, Value]:
        p = self.params
        line = self._line_kpa()
        share = min(1.0, line / p.regulator.setpoint_kpa) if p.regulator.setpoint_kpa else 0.0
        drawn = p.demand.metered_m3h(self.sim_time_s) * share
        return {
            "bank_left_kpa": max(0.0, self.bank_kpa[0] + self._noise(10.0)),
            "bank_right_kpa": max(0.0, self.bank_kpa[1] + self._noise(10.0)),
            "bank_in_service": self.in_service,
            "changeovers": self.changeovers,
            "reserve_in_use": int(self.reserve_in_use),
            "pressure_kpa": max(0.0, line + self._noise(0.5)),
            "flow_m3h": max(0.0, drawn + self._noise(0.02 * p.demand.demand_m3h)),
            "alarm_line_low": _line_alarms(line, p.regulator.setpoint_kpa)[0],
            "alarm_line_high": _line_alarms(line, p.regulator.setpoint_kpa)[1],
        }


# --------------------------------------------------------------------------- liquid oxygen tank
# Level transmitter repeatability (project choice): 0.002 % of a 5,000 L tank is 0.1 L of
# liquid, 80 normal litres of gas; a noisier gauge would hide the draw of a demo's few
# compressed minutes in the chain balance's trend (a site's 30 min window averages it out).
LOX_LEVEL_NOISE_PCT = 0.002


@dataclass
class LoxTankParams:
    """Vacuum-insulated evaporator (VIE): liquid capacity, pressures (gauge kPa), vaporiser."""

    capacity_l: float = 5000.0  # liquid capacity (a 5 m3 hospital VIE)
    boil_off_pct_per_day: float = 0.5  # of the full capacity (project choice, module doc)
    operating_kpa: float = 1000.0  # pressure-building / economiser keep the tank here
    relief_kpa: float = 1600.0  # inner vessel safety valve
    # With nothing drawn the heat leak raises the pressure until the safety valve lifts after
    # about a week (module doc): 600 kPa in 7 days at full heat leak.
    rise_kpa_per_day: float = 86.0
    vaporiser_m3h: float = 60.0  # ambient vaporiser rating (normal m3/h)
    ambient_c: float = 10.0
    regulator: LineRegulator = field(default_factory=LineRegulator)
    demand: Demand = field(default_factory=Demand)


class LoxTankModel(SupplyModel):
    """VIE tank: the liquid falls with consumption (0.80 Nm3 of gas per litre) plus boil-off.

    While gas is drawn the economiser uses the boil-off and the pressure-building circuit holds
    ``operating_kpa``; with a draw below the boil-off the surplus raises the pressure
    (``rise_kpa_per_day`` at zero draw) up to the safety valve, which vents it.
    The vaporiser outlet is the ambient less a drop growing with the load on the vaporiser
    (about 10 K at its rating; an overloaded or iced vaporiser lets cold gas through).
    Run dry (level 0 %), the tank pressure and the line collapse within minutes.
    Faults: ``pressure_builder_failed`` (the tank pressure decays toward what the line needs
    as the liquid is drawn), ``vaporiser_iced`` (outlet 30 K colder), the demand's
    ``leak_m3h``, the regulator's drift, ``stuck``.
    """

    def __init__(self, params: LoxTankParams | None = None, seed: int = 0, level_pct: float = 80.0):
        super().__init__(seed)
        self.params = params or LoxTankParams()
        self.liquid_l = self.params.capacity_l * level_pct / 100.0
        self.tank_kpa = self.params.operating_kpa
        self.pressure_builder_failed = False
        self.vaporiser_iced = False
        self.vented_l = 0.0  # liquid lost through the safety valve

    @property
    def level_pct(self) -> float:
        return 100.0 * self.liquid_l / self.params.capacity_l

    def source_kpa(self) -> float:
        """The pressure upstream of the line regulator: the inner vessel's."""
        return self.tank_kpa

    def refill(self, level_pct: float = 95.0) -> None:
        """A tanker delivery tops the tank up to ``level_pct``."""
        self.liquid_l = max(self.liquid_l, self.params.capacity_l * level_pct / 100.0)

    def _drawn_m3h(self) -> float:
        p = self.params
        line = p.regulator.outlet_kpa(self.tank_kpa, p.demand.metered_m3h(self.sim_time_s))
        share = min(1.0, line / p.regulator.setpoint_kpa) if p.regulator.setpoint_kpa else 0.0
        empty = 1.0 if self.liquid_l > 0 else 0.0
        return (p.demand.metered_m3h(self.sim_time_s) * share + p.demand.leak_m3h) * empty

    def _step(self, dt_s: float) -> None:
        p = self.params
        p.regulator.advance(dt_s)
        if self.liquid_l <= 0.0:
            if p.demand.metered_m3h(self.sim_time_s) + p.demand.leak_m3h > 0.0:
                # Run dry: the consumers draw the vapour space down within minutes.
                self.tank_kpa *= math.exp(-dt_s / 600.0)
            return
        drawn_l = self._drawn_m3h() * dt_s / 3600.0 / LOX_NM3_PER_L
        boil_l = p.capacity_l * p.boil_off_pct_per_day / 100.0 * dt_s / 86400.0
        # Gas drawn takes the boil-off with it (economiser); the rest builds pressure.
        surplus = max(0.0, 1.0 - drawn_l / boil_l) if boil_l > 0 else 0.0
        if self.pressure_builder_failed:
            # Drawing from the vapour space with no pressure building: the pressure falls with
            # the gas taken (about the full operating pressure per 2 % of capacity drawn).
            frac = drawn_l / p.capacity_l
            self.tank_kpa = max(0.0, self.tank_kpa - frac * 50.0 * p.operating_kpa)
            self.tank_kpa += surplus * p.rise_kpa_per_day * dt_s / 86400.0
        elif surplus > 0.0:
            self.tank_kpa += surplus * p.rise_kpa_per_day * dt_s / 86400.0
        else:
            self.tank_kpa = p.operating_kpa + (self.tank_kpa - p.operating_kpa) * math.exp(
                -dt_s / 3600.0
            )
        if self.tank_kpa > p.relief_kpa:
            self.tank_kpa = p.relief_kpa
            self.vented_l += surplus * boil_l
        self.liquid_l = max(0.0, self.liquid_l - drawn_l - boil_l)

    def _values(self) -> dict[str, Value]:
        p = self.params
        drawn = self._drawn_m3h()
        line = p.regulator.outlet_kpa(self.tank_kpa, p.demand.metered_m3h(self.sim_time_s))
        load = drawn / p.vaporiser_m3h if p.vaporiser_m3h > 0 else 0.0
        out_c = p.ambient_c - 10.0 * load - (30.0 if self.vaporiser_iced else 0.0)
        metered = max(0.0, drawn - p.demand.leak_m3h) if self.liquid_l > 0 else 0.0
        return {
            "lox_level_pct": max(
                0.0, min(100.0, self.level_pct + self._noise(LOX_LEVEL_NOISE_PCT))
            ),
            "tank_kpa": max(0.0, self.tank_kpa + self._noise(2.0)),
            "vaporiser_out_c": out_c + self._noise(0.2),
            "pressure_kpa": max(0.0, line + self._noise(0.5)),
            "flow_m3h": max(0.0, metered + self._noise(0.02 * p.demand.demand_m3h)),
            "alarm_line_low": _line_alarms(line, p.regulator.setpoint_kpa)[0],
            "alarm_tank_high": self.tank_kpa > p.relief_kpa - TANK_HIGH_MARGIN_KPA,
        }


# --------------------------------------------------------------------------- area alarm panel
@dataclass
class ZoneParams:
    """One zone behind its zone valve: flow drawn and the pipe's pressure drop."""

    demand: Demand = field(default_factory=Demand)
    drop_kpa_per_m3h2: float = 0.05  # branch pressure drop ~ flow squared (turbulent)
    metered: bool = True


@dataclass
class AreaPanelParams:
    """Area alarm panel / zone valve box fed by one riser (gauge kPa, normal m3/h)."""

    nominal_kpa: float = 400.0  # the normal line pressure the panel's set points follow
    alarm_band: float = 0.20  # NFPA 99 area alarms: +-20 % of the normal line pressure
    regulator: LineRegulator = field(default_factory=LineRegulator)
    source_kpa: float = 800.0  # upstream of the riser regulator (the supply's own pressure)
    zones: list[ZoneParams] = field(
        default_factory=lambda: [ZoneParams(), ZoneParams(), ZoneParams(metered=False)]
    )


class AreaPanelModel(SupplyModel):
    """Zone pressures downstream of a riser regulator, each less its branch's flow-squared
    drop; the panel sets its own ``alarm_low`` / ``alarm_high`` bits at +-``alarm_band`` of the
    nominal pressure (on any zone). ``flow_m3h`` is the riser total; ``zone{n}_m3h`` is
    reported for metered zones.

    Faults: ``valve_closed[n]`` (a zone valve shut: that zone reads 0), per-zone
    ``leak_m3h``, the riser regulator's drift (high or low), ``source_kpa`` falling (the
    supply upstream failing), ``stuck``.
    """

    def __init__(self, params: AreaPanelParams | None = None, seed: int = 0):
        super().__init__(seed)
        self.params = params or AreaPanelParams()
        self.valve_closed = [False] * len(self.params.zones)

    def _zone_flows(self) -> list[float]:
        t = self.sim_time_s
        return [
            0.0 if closed else z.demand.metered_m3h(t) + z.demand.leak_m3h
            for z, closed in zip(self.params.zones, self.valve_closed, strict=True)
        ]

    def zone_kpa(self) -> list[float]:
        p = self.params
        flows = self._zone_flows()
        riser = p.regulator.outlet_kpa(p.source_kpa, sum(flows))
        return [
            0.0 if closed else max(0.0, riser - z.drop_kpa_per_m3h2 * q * q)
            for z, q, closed in zip(p.zones, flows, self.valve_closed, strict=True)
        ]

    def _step(self, dt_s: float) -> None:
        self.params.regulator.advance(dt_s)

    def _values(self) -> dict[str, Value]:
        p = self.params
        zones = self.zone_kpa()
        lo = p.nominal_kpa * (1.0 - p.alarm_band)
        hi = p.nominal_kpa * (1.0 + p.alarm_band)
        out: dict[str, Value] = {}
        flows = self._zone_flows()
        metered_total = 0.0
        for n, (z, kpa, q) in enumerate(zip(p.zones, zones, flows, strict=True), start=1):
            out[f"zone{n}_kpa"] = max(0.0, kpa + self._noise(0.5))
            if z.metered:
                shown = max(0.0, q - z.demand.leak_m3h) if q > 0 else 0.0
                out[f"zone{n}_m3h"] = max(0.0, shown + self._noise(0.01))
                metered_total += shown
        out["flow_m3h"] = max(0.0, metered_total)
        out["alarm_low"] = any(kpa < lo for kpa in zones)
        out["alarm_high"] = any(kpa > hi for kpa in zones)
        return out


def model_for_profile(nominal: dict[str, object], seed: int = 0) -> SupplyModel:
    """The supply model a profile's ``[nominal] model`` names (``buffer-tank``, ``manifold``,
    ``lox-tank``, ``area-panel``), parameterised from the same table.

    Raises ``ValueError`` naming the key and the expected values otherwise.
    """

    def num(key: str, default: float) -> float:
        value = nominal.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"[nominal] {key} = {value!r}: expected a number")
        return float(value)

    kind = nominal.get("model")
    setpoint = num("pressure_kpa_setpoint", 400.0)
    regulator = LineRegulator(setpoint_kpa=setpoint)
    demand = Demand(demand_m3h=num("demand_m3h", 3.0), daily_swing=num("daily_swing", 0.0))
    if kind == "buffer-tank":
        # The regulator's minimum inlet: the floor of the tank's usable gas.
        regulator.min_dp_kpa = num("min_inlet_kpa", setpoint + 50.0) - setpoint
        return BufferTankModel(
            BufferTankParams(
                volume_m3=num("volume_m3", 2.0),
                cut_in_kpa=num("cut_in_kpa", 600.0),
                cut_out_kpa=num("cut_out_kpa", 800.0),
                fill_m3h=num("fill_m3h", 15.0),
                relief_kpa=num("tank_kpa_relief", 1000.0),
                regulator=regulator,
                demand=demand,
            ),
            seed=seed,
        )
    if kind == "manifold":
        return ManifoldModel(
            ManifoldParams(
                cylinders_per_bank=int(num("cylinders_per_bank", 10)),
                cylinder_water_l=num("cylinder_water_l", 40.0),
                full_kpa=num("bank_full_kpa", 15000.0),
                changeover_kpa=num("changeover_kpa", 1000.0),
                regulator=regulator,
                demand=demand,
            ),
            seed=seed,
        )
    if kind == "lox-tank":
        return LoxTankModel(
            LoxTankParams(
                capacity_l=num("capacity_l", 5000.0),
                boil_off_pct_per_day=num("boil_off_pct_per_day", 0.5),
                operating_kpa=num("operating_kpa", 1000.0),
                relief_kpa=num("tank_kpa_relief", 1600.0),
                regulator=regulator,
                demand=demand,
            ),
            seed=seed,
            level_pct=num("initial_level_pct", 80.0),
        )
    if kind == "area-panel":
        zones = int(num("zones", 3))
        metered = int(num("metered_zones", 2))
        return AreaPanelModel(
            AreaPanelParams(
                nominal_kpa=setpoint,
                regulator=LineRegulator(setpoint_kpa=setpoint, droop_kpa_per_m3h=0.2),
                zones=[
                    ZoneParams(demand=Demand(demand_m3h=demand.demand_m3h), metered=n < metered)
                    for n in range(zones)
                ],
            ),
            seed=seed,
        )
    raise ValueError(
        f"[nominal] model = {kind!r}: expected 'buffer-tank', 'manifold', 'lox-tank' or "
        "'area-panel'"
    )
