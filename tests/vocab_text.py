"""Generated Korean and Chinese text for vocabulary-expansion tests: sentences from word lists and templates.

The words are common everyday nouns, verbs and particles; a Korean sentence is
"noun+particle noun+particle ... verb-ending." and a Chinese one "subject (time) (place) verb object。",
drawn with a fixed seed, so a training corpus and a held-out text share vocabulary but not sentences.
"""

from __future__ import annotations

import random
from pathlib import Path

KO_NOUNS = ("학교 선생님 학생 친구 가족 어머니 아버지 동생 회사 사무실 도서관 병원 시장 공원 바다 강 산 하늘 "
            "구름 나무 꽃 자동차 버스 지하철 기차 비행기 컴퓨터 전화 음식 김치 밥 물 커피 우유 과일 사과 "
            "책 신문 영화 음악 노래 그림 사진 시간 오늘 내일 어제 아침 저녁 주말 여름 겨울 봄 가을 도시 "
            "마을 나라 세계 경제 정부 역사 문화 사회 교육 기술 과학 연구 문제 방법 생각 마음 사랑 행복 "
            "건강 운동 축구 야구 여행 휴가 날씨 바람 눈 비 창문 문 방 집 부엌 식당 호텔 은행 우체국 "
            "대학교 대통령 국회 법률 헌법 국민 권리 의무 자유 평화 환경 에너지 전기 인터넷 프로그램").split()
KO_PARTICLES = ("이 가 은 는 을 를 에 에서 으로 와 과 의 도 만 까지 부터").split()
KO_VERBS = ("갑니다 옵니다 먹습니다 마십니다 봅니다 읽습니다 씁니다 만듭니다 좋아합니다 공부합니다 "
            "일합니다 이야기합니다 생각합니다 기다립니다 도와줍니다 배웁니다 가르칩니다 있습니다 없습니다 "
            "필요합니다 중요합니다 아름답습니다 따뜻합니다 시원합니다 바쁩니다 갔어요 먹었어요 봤어요 "
            "좋아요 했습니다 됩니다 발전했습니다 보호합니다 결정했습니다").split()
KO_ADVERBS = "아주 정말 매우 자주 항상 다시 함께 빨리 천천히 조금 많이 벌써 아직".split()

ZH_SUBJECTS = "我 你 他 她 我们 他们 老师 学生 朋友 妈妈 爸爸 孩子 医生 政府 公司 大家 这个人 我的朋友".split()
ZH_TIMES = "今天 明天 昨天 早上 晚上 周末 现在 去年 每天 经常 已经 马上".split()
ZH_PLACES = "在学校 在家里 在公司 在医院 在公园 在北京 在上海 在中国 在图书馆 在饭店 在商店 在火车站".split()
ZH_VERBS = "喜欢 学习 研究 讨论 参观 准备 需要 认为 希望 决定 开始 完成 介绍 发展 保护 提高 解决 了解".split()
ZH_OBJECTS = ("中文 历史 文化 经济 问题 计划 工作 电影 音乐 新闻 技术 科学 环境 教育 健康 旅行 城市 "
              "国家 世界 社会 生活 时间 方法 机会 知识 电脑 手机 网络 咖啡 米饭 水果 天气 朋友们 这本书").split()
ZH_ENDINGS = ["。", "。", "。", "！", "？", "，非常重要。", "，大家都很高兴。", "了。"]


def korean_sentence(rng: random.Random) -> str:
    """One generated Korean sentence."""
    words = [rng.choice(KO_NOUNS) + rng.choice(KO_PARTICLES) for _ in range(rng.randint(2, 5))]
    if rng.random() < 0.4:
        words.insert(rng.randrange(len(words) + 1), rng.choice(KO_ADVERBS))
    return " ".join(words + [rng.choice(KO_VERBS)]) + rng.choice(".?!.")


def chinese_sentence(rng: random.Random) -> str:
    """One generated Chinese sentence."""
    parts = [rng.choice(ZH_SUBJECTS)]
    if rng.random() < 0.6:
        parts.append(rng.choice(ZH_TIMES))
    if rng.random() < 0.5:
        parts.append(rng.choice(ZH_PLACES))
    parts += [rng.choice(ZH_VERBS), rng.choice(ZH_OBJECTS)]
    return "".join(parts) + rng.choice(ZH_ENDINGS)


def generate(lang: str, num_lines: int, seed: int) -> list[str]:
    """`num_lines` generated sentences of 'ko' or 'zh' (two per line)."""
    make = {"ko": korean_sentence, "zh": chinese_sentence}[lang]
    rng = random.Random(seed)
    sep = " " if lang == "ko" else ""
    return [sep.join(make(rng) for _ in range(2)) for _ in range(num_lines)]


def write_text(path: Path, lines: list[str]) -> Path:
    """Write lines as a UTF-8 file."""
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
