"""Patient identity: planted in every de-identification field, found nowhere downstream.

The real Siemens mosaic series is copied with pydicom and a distinctive value is planted in
every attribute of the DICOM PS3.15 Annex E basic application level confidentiality profile
(Table E.1-1) that an MR image can carry: names and IDs, dates and times, descriptions,
device and institution, every instance UID (also inside sequences and in the file meta
header) and private text elements. The copy is written into a watched folder while
``rtserver -v serve`` and ``rtserver -v send --watch`` run as real processes, with a
recording TCP relay on the volume, feedback and results channels (both directions). No
planted value, no date in any of its written forms, appears in the relayed bytes, in any
file under the output folder (gzip decompressed), or on the stdout and stderr of either
process. A control checks that every value is present in the planted files, so the search
can fail.

The readers keep a one-way digest of the SeriesInstanceUID (``dicom-<blake2b>``), never the
UID: the UID's text is among the values searched for.
"""

from __future__ import annotations

import datetime
import gzip
import re
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
import zmq
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from rtserver import protocol
from rtserver.scanner.export_writer import ExportPlan, ExportWriter
from rtserver.scanner.readers.pieces import series_digest

from .conftest import SIEMENS_MOSAIC, command
from .relay import RecordingRelay

ANY_PORT = "tcp://127.0.0.1:*"
LISTENING = r"listening: volumes (\S+), feedback (\S+), results (\S+)"
N_VOLUMES = 10

#: DICOM PS3.15 Annex E Table E.1-1 (basic application level confidentiality profile):
#: every attribute with a text value an MR image (patient, study, series, equipment,
#: frame of reference, image, request and procedure step modules, SOP common) can carry.
#: Sequences are planted separately (:data:`PROFILE_SEQUENCES`), with the UIDs inside
#: them; pixel data, overlays and curves are not text and are left alone.
PROFILE_KEYWORDS = (
    # Patient
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientBirthTime",
    "PatientSex", "PatientAge", "PatientSize", "PatientWeight", "PatientAddress",
    "OtherPatientIDs", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
    "MedicalRecordLocator", "MilitaryRank", "BranchOfService", "EthnicGroup", "Occupation",
    "PatientComments", "PatientTelephoneNumbers", "CountryOfResidence", "RegionOfResidence",
    "PatientReligiousPreference", "PatientSexNeutered", "AdditionalPatientHistory",
    "Allergies", "MedicalAlerts", "SmokingStatus", "LastMenstrualDate", "PatientState",
    "SpecialNeeds", "ResponsiblePerson", "ResponsibleOrganization",
    "ConfidentialityConstraintOnPatientDataDescription", "PatientInstitutionResidence",
    "CurrentPatientLocation", "PatientTransportArrangements",
    # Visit and admission
    "AdmissionID", "AdmittingDate", "AdmittingTime", "AdmittingDiagnosesDescription",
    "DischargeDiagnosisDescription", "ServiceEpisodeID", "ServiceEpisodeDescription",
    "VisitComments",
    # Study
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
    "StudyDescription", "ReferringPhysicianName", "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers", "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy",
    "RequestingPhysician", "RequestingService", "ReasonForStudy",
    "RequestedProcedureDescription", "RequestedProcedureID", "RequestedProcedureComments",
    "RequestedProcedureLocation", "RequestedContrastAgent", "ImagingServiceRequestComments",
    "PlacerOrderNumberImagingServiceRequest", "FillerOrderNumberImagingServiceRequest",
    "OrderEnteredBy", "OrderEntererLocation", "OrderCallbackPhoneNumber",
    "NamesOfIntendedRecipientsOfResults",
    # Series and performed procedure step
    "SeriesInstanceUID", "SeriesDate", "SeriesTime", "SeriesDescription", "ProtocolName",
    "PerformingPhysicianName", "OperatorsName", "PerformedProcedureStepID",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime",
    "PerformedProcedureStepDescription", "CommentsOnThePerformedProcedureStep",
    "PerformedLocation", "PerformedStationAETitle", "PerformedStationName",
    "ScheduledProcedureStepID", "ScheduledProcedureStepDescription",
    "ScheduledProcedureStepLocation", "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime", "ScheduledProcedureStepEndDate",
    "ScheduledProcedureStepEndTime", "ScheduledPerformingPhysicianName",
    "ScheduledStationAETitle", "ScheduledStationName", "HumanPerformerName",
    "HumanPerformerOrganization", "PreMedication",
    # Equipment
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName",
    "DeviceSerialNumber", "DeviceUID", "SoftwareVersions", "GantryID", "GeneratorID",
    "PlateID",
    # Frame of reference, image, acquisition
    "FrameOfReferenceUID", "SynchronizationFrameOfReferenceUID", "AcquisitionUID",
    "AcquisitionDate", "AcquisitionTime", "AcquisitionDateTime", "ContentDate", "ContentTime",
    "AcquisitionComments", "AcquisitionContextDescription", "AcquisitionProtocolName",
    "AcquisitionDeviceProcessingDescription", "ContrastBolusAgent", "DerivationDescription",
    "ImageComments", "FrameComments", "IrradiationEventUID", "ConcatenationUID",
    "DimensionOrganizationUID", "ContentCreatorName",
    # SOP common
    "SOPInstanceUID", "InstanceCreationDate", "InstanceCreationTime", "InstanceCreatorUID",
    "TimezoneOffsetFromUTC", "ContextGroupExtensionCreatorUID", "CreatorVersionUID",
    # Structured content that may sit in an image header
    "PersonName", "PersonAddress", "PersonTelephoneNumbers", "VerifyingObserverName",
    "VerifyingOrganization",
)
#: Sequences of Table E.1-1 planted with one item, and the text attributes of that item.
PROFILE_SEQUENCES = {
    "OtherPatientIDsSequence": ("PatientID", "IssuerOfPatientID"),
    "ReferencedPatientSequence": ("ReferencedSOPInstanceUID",),
    "ReferencedStudySequence": ("ReferencedSOPInstanceUID",),
    "ReferencedPerformedProcedureStepSequence": ("ReferencedSOPInstanceUID",),
    "RequestAttributesSequence": ("RequestedProcedureID", "ScheduledProcedureStepID",
                                  "AccessionNumber"),
    "InstitutionCodeSequence": ("CodeValue", "CodeMeaning"),
    "PatientInsurancePlanCodeSequence": ("CodeValue", "CodeMeaning"),
    "ReferringPhysicianIdentificationSequence": ("InstitutionName", "PersonAddress"),
    "PerformingPhysicianIdentificationSequence": ("InstitutionName", "PersonTelephoneNumbers"),
    "OperatorIdentificationSequence": ("InstitutionName", "PersonAddress"),
    "PhysiciansOfRecordIdentificationSequence": ("InstitutionName", "PersonAddress"),
    "PhysiciansReadingStudyIdentificationSequence": ("InstitutionName", "PersonAddress"),
}
#: Private text elements of these files (Table E.1-1: private attributes are removed).
PRIVATE_TEXT = (0x00291009, 0x00291019)
#: The Siemens CSA headers (binary): their UIDs and dates are replaced in place by values
#: of the same length, which keeps every length field inside them right.
PRIVATE_CSA = (0x00291010, 0x00291020)
#: The scanner's UID root, and a planted one of the same length.
SCANNER_UID_ROOT = b"1.3.12.2.1107.5.2.19.45031"
#: Attributes whose value is the same for every file of one series.
SERIES_WIDE_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
                    "SynchronizationFrameOfReferenceUID", "ConcatenationUID",
                    "DimensionOrganizationUID", "DeviceUID", "InstanceCreatorUID",
                    "CreatorVersionUID", "ContextGroupExtensionCreatorUID", "AcquisitionUID",
                    "IrradiationEventUID")
#: Root of every planted UID (never made by this project or by pydicom).
UID_ROOT = "1.2.826.0.1.3680043.9.9999"
#: The series' own identity, which planting must have replaced everywhere.
ORIGINAL = (b"greenEyes", b"0219191", b"Norman_Mennen", b"Princeton", b"AWP45031",
            b"1.3.12.2.1107.5.2.19.45031", b"20190219", b"111435.579")
TEXT_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"}


@dataclass
class Planted:
    """What was planted: every value, and the byte strings to look for downstream."""

    values: dict[str, str] = field(default_factory=dict)
    needles: dict[bytes, str] = field(default_factory=dict)
    n: int = 0

    def text(self, name: str, vr: str) -> str:
        """A distinctive value of representation ``vr`` for attribute ``name``."""
        if name in self.values:
            return self.values[name]
        self.n += 1
        n = self.n
        if vr == "DA":
            value = self._date(n).strftime("%Y%m%d")
        elif vr == "TM":
            value = self._time(n)
        elif vr == "DT":
            value = self._date(n).strftime("%Y%m%d") + self._time(n)
        elif vr == "AS":
            value = f"{100 + n % 900:03d}Y"
        elif vr == "DS":
            value = f"{n}.9{n:03d}817"
        elif vr == "UI":
            value = f"{UID_ROOT}.{n}"
        elif vr == "PN":
            value = f"IDENT{n:03d}XYZ^GIVEN{n:03d}XYZ"
        else:
            value = f"IDENT{n:03d}XYZ"
        self.values[name] = value
        self._add_needles(name, vr, value, n)
        return value

    @staticmethod
    def _date(n: int) -> datetime.date:
        return datetime.date(1923, 4, 5) + datetime.timedelta(days=37 * n)

    @staticmethod
    def _time(n: int) -> str:
        return f"{n % 24:02d}{(7 * n) % 60:02d}{(13 * n) % 60:02d}.{730000 + n:06d}"

    def _add_needles(self, name: str, vr: str, value: str, n: int) -> None:
        needles = [value.encode()]
        if vr in ("DA", "DT"):
            day = self._date(n)
            needles += [day.strftime(form).encode() for form in (
                "%Y%m%d", "%Y-%m-%d", "%Y.%m.%d", "%Y/%m/%d", "%d.%m.%Y", "%m/%d/%Y",
                "%d/%m/%Y", "%d-%m-%Y", "%d %b %Y", "%b %d, %Y")]
        if vr in ("TM", "DT"):
            hhmmss, fraction = self._time(n).split(".")
            needles += [f"{hhmmss}.{fraction}".encode(),
                        f"{hhmmss[:2]}:{hhmmss[2:4]}:{hhmmss[4:]}.{fraction}".encode()]
        if vr == "PN":
            needles += [part.encode() for part in value.split("^")]
        for needle in needles:
            self.needles[needle.lower()] = name


def plant(source: Path, target: Path) -> Planted:
    """Copy the series in ``source`` into ``target`` with every profile field planted."""
    target.mkdir(parents=True)
    planted = Planted()
    for number, path in enumerate(sorted(source.glob("*.dcm"))):
        dataset = pydicom.dcmread(path)
        for name in PROFILE_KEYWORDS:
            vr = dictionary_VR(name)
            value = planted.text(name, vr)
            if vr == "UI" and name not in SERIES_WIDE_UIDS:
                value = f"{value}.{number + 1}"  # one per file, as scanners make them
            setattr(dataset, name, value)
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        for name, inner in PROFILE_SEQUENCES.items():
            item = Dataset()
            for keyword in inner:
                setattr(item, keyword, planted.text(f"{name}.{keyword}", dictionary_VR(keyword)))
            if "ReferencedSOPInstanceUID" in inner:
                item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
            setattr(dataset, name, Sequence([item]))
        for name in ("ReferencedImageSequence", "SourceImageSequence"):
            for k, item in enumerate(getattr(dataset, name)):
                uid = planted.text(f"{name}.{k}", "UI")
                item.ReferencedSOPInstanceUID = f"{uid}.{number + 1}"
        for tag in PRIVATE_TEXT:
            dataset[tag].value = planted.text(f"private {tag:08X}", "LO")
        date = planted.text("CSA header dates", "DA").encode()
        assert len(UID_ROOT) == len(SCANNER_UID_ROOT) and len(date) == len(b"20190219")
        for tag in PRIVATE_CSA:
            dataset[tag].value = (dataset[tag].value.replace(SCANNER_UID_ROOT, UID_ROOT.encode())
                                  .replace(b"20190219", date))
        dataset.save_as(target / path.name, enforce_file_format=True)
    return planted


def leaks(content: bytes, planted: Planted) -> list[str]:
    """Every planted value (or generic planted pattern) found in ``content``."""
    lowered = content.lower()
    found = [f"{name}: {needle!r}" for needle, name in planted.needles.items()
             if needle in lowered]
    for pattern in (rb"ident\d{3}xyz", rb"given\d{3}xyz", UID_ROOT.encode()):
        match = re.search(pattern, lowered)
        if match:
            found.append(f"pattern {pattern!r}: {match.group(0)!r}")
    return found


def finish(process, timeout: float = 60.0) -> tuple[int, bytes]:
    """Wait for a :class:`~tests.conftest.RunningProcess`; its exit code, stdout and stderr."""
    try:
        stdout, rest = process.proc.communicate(timeout=timeout)
    except Exception:
        process.kill()
        raise
    stderr = "".join(process.stderr_lines).encode() + process._partial + rest
    return process.proc.returncode, stdout + stderr


def output_files(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` (gzip decompressed), and the list of their names."""
    outputs = sorted(path for path in out.rglob("*") if path.is_file())
    assert len(outputs) >= 5, outputs
    places = {}
    for path in outputs:
        content = path.read_bytes()
        if path.suffix == ".gz":
            content = gzip.decompress(content)
        places[str(path.relative_to(out))] = content
    places["the output's file names"] = "\n".join(
        str(path.relative_to(out)) for path in out.rglob("*")).encode()
    return places


@pytest.fixture(scope="module")
def planted_series(tmp_path_factory) -> tuple[Path, Planted]:
    folder = tmp_path_factory.mktemp("identity") / "planted"
    return folder, plant(SIEMENS_MOSAIC, folder)


def test_every_profile_field_is_planted_and_the_series_still_reads(planted_series):
    """The control: every planted value is in the input, the original identity is not, and
    the copy is read as the same series (one digest per series, never the UID).
    """
    from rtserver.scanner.sources import open_source

    folder, planted = planted_series
    content = b"".join(path.read_bytes() for path in sorted(folder.iterdir()))
    assert len(planted.values) > 150
    for name, value in planted.values.items():
        assert value.encode() in content, f"{name} = {value!r} is not in the planted files"
    left = [value for value in ORIGINAL if value in content]
    assert not left, f"the original identity is still in the planted files: {left}"
    first = pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True)
    assert str(first.PatientName) == planted.values["PatientName"]
    assert first.SeriesInstanceUID == planted.values["SeriesInstanceUID"]
    volumes = list(open_source(folder))
    assert [v.index for v in volumes] == list(range(N_VOLUMES))
    assert leaks(repr([v.meta for v in volumes]).encode(), planted) == []
    digest = series_digest("dicom", planted.values["SeriesInstanceUID"])
    assert re.fullmatch(r"dicom-[0-9a-f]{24}", digest)
    assert planted.values["SeriesInstanceUID"].encode() not in digest.encode()
    assert leaks(b"planted IDENT001XYZ", planted)  # the search finds what it looks for


def test_no_planted_identity_on_the_wire_in_outputs_or_logs(planted_series, tmp_path,
                                                            processes):
    folder, planted = planted_series
    out = tmp_path / "out"
    server = processes([command("rtserver"), "-v", "serve", "--out", str(out), "--volumes",
                        ANY_PORT, "--feedback", ANY_PORT, "--results", ANY_PORT])
    volumes, feedback, results = server.wait_for(LISTENING).groups()
    relays = {name: RecordingRelay(endpoint, both_ways=True) for name, endpoint in
              (("volumes", volumes), ("feedback", feedback), ("results", results))}
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    req = context.socket(zmq.REQ)
    try:
        for sock in (sub, req):
            sock.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, protocol.FEEDBACK_TOPIC)
        sub.connect(relays["feedback"].endpoint)
        req.connect(relays["results"].endpoint)
        server.wait_for("a feedback subscriber joined")

        export = tmp_path / "export"
        export.mkdir()
        bridge = processes([command("rtserver"), "-v", "send", str(export), "--watch", "--to",
                            relays["volumes"].endpoint, "--n-volumes", str(N_VOLUMES)])
        bridge.wait_for(r"watching .*\(file events\)")
        plan = ExportPlan(groups=[[p] for p in sorted(folder.glob("*.dcm"))], interval=0.08)
        writer = ExportWriter(plan, export).start()
        received = []
        while sub.poll(30000):
            message = protocol.decode_feedback(sub.recv_multipart())
            if isinstance(message, int):
                break
            received.append(message.volume)
            if len(received) == 1:  # the results channel, while the run goes on
                for request in (protocol.encode_result_request(0),
                                protocol.encode_status_request()):
                    req.send(request)
                    assert req.poll(10000), "the results channel did not answer"
                    assert protocol.decode_response(req.recv())["type"] in ("result", "status")
        assert received == list(range(N_VOLUMES))
        code, bridge_output = finish(bridge)
        writer.join(timeout=30)
        assert code == 0, bridge_output.decode(errors="replace")
        code, server_output = finish(server)
        assert code == 0, server_output.decode(errors="replace")
    finally:
        sub.close()
        req.close()
        context.term()
        for relay in relays.values():
            relay.close()

    assert re.search(rb"sent 10 volumes from \d+ files", bridge_output), bridge_output
    assert b"10 volumes processed" in server_output, server_output
    places = {f"the {name} channel's bytes": bytes(relay.recorded)
              for name, relay in relays.items()}
    assert len(places["the volumes channel's bytes"]) > 10 * 64 * 64 * 2  # voxels went through
    places["the bridge's stdout and stderr"] = bridge_output
    places["the server's stdout and stderr"] = server_output
    places.update(output_files(out))
    found = {place: leaks(content, planted) for place, content in places.items()}
    assert not any(found.values()), {place: hits for place, hits in found.items() if hits}
    series_uid = planted.values["SeriesInstanceUID"].encode()
    assert all(series_uid not in content for content in places.values())



def test_no_planted_identity_in_a_replay(planted_series, tmp_path, processes):
    """`rtserver -v replay` of the planted folder: outputs and log lines are clean too."""
    folder, planted = planted_series
    out = tmp_path / "replayed"
    replay = processes([command("rtserver"), "-v", "replay", str(folder), "--out", str(out),
                        "--asap"])
    code, output = finish(replay)
    assert code == 0, output.decode(errors="replace")
    assert b"replayed 10 volumes" in output, output
    places = {"the replay's stdout and stderr": output, **output_files(out)}
    found = {place: leaks(content, planted) for place, content in places.items()}
    assert not any(found.values()), {place: hits for place, hits in found.items() if hits}
