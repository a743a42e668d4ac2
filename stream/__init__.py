"""stream: streaming anomaly detection and model monitoring on Apache Kafka."""

__version__ = "0.1.0"
