"""o2chain gateway: Modbus + MQTT -> validate -> enrich -> alarms -> outbox -> InfluxDB."""
